"""Every error status an operation can answer, declared in its OpenAPI document, derived from the route itself.

What a route can answer follows from what it depends on, so it is decided here once rather than by hand on each
route (what a route declares itself with ``responses=`` still wins, with its more precise description and model):

* any request: 400 (a Content-Length that is not a number), 413 (a body past the limit) and 429 (rates), all
  answered by enlace_platform.limits before the route runs;
* a token to verify: 401, and 503 while the identity provider's keys cannot be fetched;
* a permission (``Allowed``): 403;
* an Idempotency-Key: 400 for a blank or unprintable key;
* parameters or a body: 422;
* path parameters: 404;
* a database session: 503 while the database cannot serve; a write session also 409, a conflict with the
  current state of what it would change (a status, a duplicate, an object still in use).
"""

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from enlace_platform.access import required_permission
from enlace_platform.audit import READ_METHODS
from enlace_platform.auth import current_principal
from enlace_platform.idempotency import _idempotency_key
from enlace_platform.problems import PROBLEM_JSON, ProblemDetails

_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": ProblemDetails, "description": description}
    if headers:
        doc["headers"] = headers
    return doc


ENTRY = {
    400: _problem("Malformed request: a Content-Length that is not a number"),
    413: _problem("The request body is larger than the service accepts (1 MiB unless configured)"),
    429: _problem("Too many requests from your agency, or from your address without a valid token", _RETRY_AFTER),
}
AUTHENTICATED = {
    401: _problem("Missing, expired or invalid Bearer token",
                  {"WWW-Authenticate": {"description": "The Bearer challenge (RFC 6750)",
                                        "schema": {"type": "string"}}}),
    503: _problem("The identity provider's keys or the service's database cannot be reached right now",
                  _RETRY_AFTER),
}
FORBIDDEN = {403: _problem("Your roles lack this route's permission (named in `permission`), or your agency's "
                           "relation to the object does not allow this action")}
INVALID = {422: _problem("Invalid input; `errors[].path` names each bad field")}
NOT_FOUND = {404: _problem("Not found, or not visible to your agency")}
# Also declared by hand on the routes that read the database outside any session dependency (/readyz, /metrics).
DATABASE = {503: _problem("The service's database cannot serve right now (full, locked or unreachable)",
                          _RETRY_AFTER)}
IDEMPOTENT = {400: _problem("Malformed request: a Content-Length that is not a number, or a blank or "
                            "unprintable Idempotency-Key")}
CONFLICT = {409: _problem("Conflicts with the current state of what it would change: its status or version, "
                          "a duplicate, or an object still in use")}


def _tree(dependant: Dependant) -> list[Dependant]:
    """The route's dependant and every dependency below it."""
    return [dependant, *(d for sub in dependant.dependencies for d in _tree(sub))]


def statuses_of(dependant: Dependant, methods: set[str]) -> dict[int, dict[str, Any]]:
    """The problem answers a route can give, from its dependencies, parameters and body."""
    tree = _tree(dependant)
    calls = {d.call for d in tree}
    sessions = {getattr(call, "__name__", "") for call in calls} & {"_db_session", "_read_session"}
    derived: dict[int, dict[str, Any]] = dict(ENTRY)
    if current_principal in calls:
        derived |= AUTHENTICATED
    if required_permission(dependant) is not None:
        derived |= FORBIDDEN
    if dependant.path_params:
        derived |= NOT_FOUND
    if any(d.path_params or d.query_params or d.header_params or d.cookie_params or d.body_params for d in tree):
        derived |= INVALID
    if sessions:
        derived.setdefault(503, DATABASE[503])
    if "_db_session" in sessions and methods - READ_METHODS:  # a write session: the route changes something
        derived |= CONFLICT
    if _idempotency_key in calls:
        derived |= IDEMPOTENT
    return derived


def _openapi_response(doc: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": doc["description"],
        "content": {PROBLEM_JSON: {"schema": {"$ref": f"#/components/schemas/{ProblemDetails.__name__}"}}}}
    if "headers" in doc:
        response["headers"] = doc["headers"]
    return response


def document_statuses(app: FastAPI) -> None:
    """Adds to each operation of ``app``'s OpenAPI document the problem answers its route can give and does not
    declare itself. Call after the app's other ``openapi`` hooks (problems.use_problem_json_in_openapi)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = build()
        if not first:
            return schema
        paths = schema.get("paths", {})
        for context in iter_route_contexts(app.routes):
            if not isinstance(context.original_route, APIRoute) or context.path not in paths:
                continue
            for method in context.methods:
                operation = paths[context.path].get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                for code, doc in sorted(statuses_of(context.dependant, set(context.methods)).items()):
                    responses.setdefault(str(code), _openapi_response(doc))
        schema.setdefault("components", {}).setdefault("schemas", {}).setdefault(
            ProblemDetails.__name__, ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}"))
        return schema

    app.openapi = openapi
