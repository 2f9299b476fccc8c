"""RFC 9457 problem details (``application/problem+json``) for every error a service returns."""

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from enlace_platform.db import database_fault, fault_code

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
# What a client is told to wait when the database cannot serve (full, locked, unreachable).
DATABASE_RETRY_AFTER_S = 5


class FieldError(BaseModel):
    path: str
    message: str | None = None
    type: str | None = None


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every error of every service is answered."""

    model_config = ConfigDict(extra="allow")
    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


def _problem_doc(description: str) -> dict[str, Any]:
    return {"model": ProblemDetails, "description": description}


# Declared on every route, so the OpenAPI documents the errors the services really return.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_doc("Missing, expired or invalid Bearer token"),
    404: _problem_doc("Not found, or not visible to your agency"),
    # 413 and 429: answered for any route by enlace_platform.limits, before the route runs.
    413: _problem_doc("The request body is larger than the service accepts (1 MiB unless configured)"),
    422: _problem_doc("Invalid input; `errors[].path` names each bad field"),
    429: {**_problem_doc("Too many requests from your agency, or from your address without a valid token"),
          "headers": {"Retry-After": {"description": "Seconds to wait before trying again",
                                      "schema": {"type": "integer"}}}},
}


def use_problem_json_in_openapi(app: FastAPI) -> None:
    """Documents error bodies as application/problem+json, the media type they are sent with."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                for code, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if code[0] in "45" and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


class Problem(Exception):
    """Raise from a route to answer with a problem document.

    Without a title, the status code's standard phrase is used, as RFC 9457 asks for
    ``about:blank``; give a title only together with a problem type of your own.
    """

    def __init__(self, status: int, title: str | None = None, detail: str | None = None, *,
                 type_: str = "about:blank", headers: dict[str, str] | None = None, **extensions: Any) -> None:
        title = title or _phrase(status)
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(request: Request, status: int, title: str, detail: str | None = None, *,
                     type_: str = "about:blank", headers: dict[str, str] | None = None, **extensions: Any) -> JSONResponse:
    body: dict[str, Any] = dict(extensions)  # the standard members below always win
    body.update({"type": type_, "title": title, "status": status, "instance": request.url.path})
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _phrase(status: int) -> str:
    # With type about:blank, RFC 9457 asks for the status code's standard phrase as title.
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def database_unavailable(request: Request, fault: BaseException) -> JSONResponse:
    """503 with Retry-After: the database cannot serve right now (a disk full, a lock held, a server gone).
    A fault outside the request, not a bug: a warning with the driver's code, no traceback, no values."""
    log.warning("database unavailable on %s %s: %s", request.method, request.url.path, fault_code(fault))
    return problem_response(
        request, 503, _phrase(503),
        "The service's database cannot serve this request right now (full, locked or unreachable). Try again "
        "after Retry-After; a POST with an Idempotency-Key is safe to repeat.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(request, exc.status, exc.title, exc.detail, type_=exc.type,
                                headers=exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"path": "/".join(str(p) for p in err.get("loc", ())), "message": err.get("msg"), "type": err.get("type")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        return problem_response(request, 422, _phrase(422), summary, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail) if exc.detail else None
        return problem_response(request, exc.status_code, _phrase(exc.status_code), detail,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # Answered here, inside the middleware, so the audit records the 503; any other database error is a bug.
        fault = database_fault(exc)
        if fault is None:
            raise exc
        return database_unavailable(request, fault)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        fault = database_fault(exc)  # e.g. from a middleware's own transaction
        if fault is not None:
            return database_unavailable(request, fault)
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(request, 500, "Internal server error",
                                "The error was logged with the request's trace id.")
