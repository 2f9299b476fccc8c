"""Idempotency-Key: a retried POST returns what the first call created; a reused key with another body is refused."""

import uuid

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlmodel import Field, SQLModel, select

from enlace_platform.auth import Principal, current_principal
from enlace_platform.idempotency import Idempotency, fingerprint
from enlace_platform.problems import install_problem_handlers
from tests.support.harness import service_database


class Thing(SQLModel, table=True):
    __tablename__ = "test_idempotency_thing"
    id: str = Field(primary_key=True)
    name: str


class ThingIn(BaseModel):
    name: str


def _principal(agency_id: str) -> Principal:
    return Principal(subject="u1", agency_id=agency_id, agency_type="migration_authority", jurisdiction="MX",
                     roles=("caseworker",))


@pytest.fixture
async def client(tmp_path):
    async with service_database(tmp_path / "idem.db", [Thing.__table__]) as sessions:
        app = FastAPI()
        install_problem_handlers(app)
        calls = {"agency": "MX-INM"}
        app.dependency_overrides[current_principal] = lambda: _principal(calls["agency"])

        @app.post("/things", status_code=201)
        async def create(body: ThingIn, idempotency: Idempotency) -> dict:
            async with sessions() as session:
                previous = await idempotency.previous_resource(session)
                if previous is not None:
                    return (await session.get(Thing, previous)).model_dump()
                thing = Thing(id=str(uuid.uuid4()), name=body.name)
                idempotency.record(session, resource_id=thing.id)
                session.add(thing)
                await session.commit()
                return thing.model_dump()

        async def count() -> int:
            async with sessions() as session:
                return len((await session.exec(select(Thing))).all())

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http, calls, count


async def test_same_key_and_body_returns_the_first_resource_and_creates_nothing_new(client):
    http, _, count = client
    first = await http.post("/things", json={"name": "a"}, headers={"Idempotency-Key": "k-1"})
    again = await http.post("/things", content=b'{ "name" : "a" }',
                            headers={"Idempotency-Key": "k-1", "content-type": "application/json"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert await count() == 1


async def test_same_key_with_another_body_is_refused_with_a_problem(client):
    http, _, count = client
    await http.post("/things", json={"name": "a"}, headers={"Idempotency-Key": "k-2"})
    clash = await http.post("/things", json={"name": "b"}, headers={"Idempotency-Key": "k-2"})
    assert clash.status_code == 422
    assert clash.headers["content-type"] == "application/problem+json"
    assert "k-2" in clash.json()["detail"]
    assert await count() == 1


async def test_keys_are_per_agency_and_absent_keys_create_each_time(client):
    http, calls, count = client
    await http.post("/things", json={"name": "a"}, headers={"Idempotency-Key": "shared"})
    calls["agency"] = "GT-IGM"
    other = await http.post("/things", json={"name": "a"}, headers={"Idempotency-Key": "shared"})
    assert other.status_code == 201
    await http.post("/things", json={"name": "a"})
    await http.post("/things", json={"name": "a"})
    assert await count() == 4


async def test_a_blank_key_is_a_bad_request(client):
    http, _, count = client
    response = await http.post("/things", json={"name": "a"}, headers={"Idempotency-Key": "  "})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert await count() == 0


def test_fingerprint_ignores_json_spacing_and_key_order_but_not_the_path():
    assert fingerprint("POST", "/x", b'{"a":1,"b":2}') == fingerprint("POST", "/x", b'{ "b": 2, "a": 1 }')
    assert fingerprint("POST", "/x", b'{"a":1}') != fingerprint("POST", "/y", b'{"a":1}')
