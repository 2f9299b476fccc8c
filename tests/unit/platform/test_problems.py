"""RFC 9457 problem details for every kind of error a service can return."""

from http import HTTPStatus
from typing import Literal

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from enlace_platform.problems import PROBLEM_JSON, Problem, install_problem_handlers


class PersonIn(BaseModel):
    given_name: str
    sex: Literal["female", "male", "other", "unknown"]


class CaseIn(BaseModel):
    place: str
    persons: list[PersonIn]


def _app() -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/holds/{hold_id}")
    async def hold(hold_id: str):
        raise Problem(409, "Person under protection hold", f"Hold {hold_id} blocks removal.",
                      type_="https://enlace.example/problems/protection-hold", hold_id=hold_id,
                      referral_id="ref-9", headers={"X-Hold": hold_id})

    @app.get("/plain")
    async def plain():
        raise Problem(403, "Forbidden")

    @app.post("/cases")
    async def cases(body: CaseIn):
        return {"persons": len(body.persons)}

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return {"item_id": item_id}

    @app.get("/gone")
    async def gone():
        raise HTTPException(410, "This referral was withdrawn", headers={"X-Reason": "withdrawn"})

    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret internal detail: db password=hunter2")

    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(_app(), raise_server_exceptions=False) as c:
        yield c


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_JSON
    body = response.json()
    assert body["status"] == status  # the body's status matches the HTTP status
    assert isinstance(body["title"], str) and body["title"]
    assert "type" in body
    return body


def test_raised_problem_becomes_problem_json(client):
    response = client.get("/holds/hold-123")
    body = _problem(response, 409)
    assert body["type"] == "https://enlace.example/problems/protection-hold"
    assert body["title"] == "Person under protection hold"
    assert body["detail"] == "Hold hold-123 blocks removal."
    assert body["instance"] == "/holds/hold-123"
    # Extension members name the hold and the referral behind it.
    assert body["hold_id"] == "hold-123"
    assert body["referral_id"] == "ref-9"
    assert response.headers["X-Hold"] == "hold-123"


def test_problem_without_detail_defaults_type_and_omits_detail(client):
    body = _problem(client.get("/plain"), 403)
    assert body["type"] == "about:blank"
    assert body["title"] == "Forbidden"
    assert "detail" not in body
    assert body["instance"] == "/plain"


def test_body_validation_error_names_the_field_path(client):
    payload = {"place": "Tapachula",
               "persons": [{"given_name": "Ana", "sex": "female"},
                           {"given_name": "Luis", "sex": "not-a-sex-value"}]}
    response = client.post("/cases", json=payload)
    body = _problem(response, 422)
    paths = [e["path"] for e in body["errors"]]
    assert paths == ["body/persons/1/sex"]
    assert body["errors"][0]["message"]
    assert body["errors"][0]["type"]
    assert "body/persons/1/sex" in body["detail"]
    assert body["instance"] == "/cases"
    # The submitted (possibly personal) value is not echoed back.
    assert "not-a-sex-value" not in response.text


def test_several_validation_errors_are_all_listed(client):
    response = client.post("/cases", json={"persons": [{"sex": "male"}, {"given_name": "X"}]})
    body = _problem(response, 422)
    paths = {e["path"] for e in body["errors"]}
    assert paths == {"body/place", "body/persons/0/given_name", "body/persons/1/sex"}


def test_path_parameter_validation_error(client):
    body = _problem(client.get("/items/not-a-number"), 422)
    assert [e["path"] for e in body["errors"]] == ["path/item_id"]


def test_malformed_json_body_is_a_422_problem(client):
    response = client.post("/cases", content=b"{not json", headers={"content-type": "application/json"})
    body = _problem(response, 422)
    assert body["errors"]


def test_unknown_route_is_a_404_problem(client):
    body = _problem(client.get("/no/such/route"), 404)
    assert body["instance"] == "/no/such/route"


def test_wrong_method_is_a_405_problem(client):
    response = client.delete("/plain")
    _problem(response, 405)
    assert "GET" in response.headers["allow"]


def test_http_exception_keeps_detail_and_headers(client):
    response = client.get("/gone")
    body = _problem(response, 410)
    assert body["detail"] == "This referral was withdrawn"
    assert response.headers["X-Reason"] == "withdrawn"


def test_unhandled_exception_is_a_500_problem_without_internals(client):
    response = client.get("/boom")
    body = _problem(response, 500)
    assert body["instance"] == "/boom"
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/no/such/route", 404),
    ("DELETE", "/plain", 405),
    ("GET", "/boom", 500),
])
def test_about_blank_title_is_the_status_phrase(client, method, path, status):
    # RFC 9457 4.2.1: with type "about:blank" the title should be the HTTP status phrase.
    body = _problem(client.request(method, path), status)
    assert body["type"] == "about:blank"
    assert body["title"].lower() == HTTPStatus(status).phrase.lower()
