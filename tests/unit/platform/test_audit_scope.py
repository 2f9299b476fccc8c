"""GET /audit with a service's audit scope: an auditor sees its staff's rows and anyone's rows on the objects
the service holds for its agency (the coordinator's auditor: for its jurisdiction), and nothing else. An
enforcement agency's auditor (MX-INM) sees others' rows on its objects without the actor (the information
barrier), and cannot filter for them."""

from pathlib import Path
from typing import Annotated

import pytest
from fastapi import APIRouter
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlmodel import select

from enlace_platform.access import Allowed, Permission
from enlace_platform.audit import Owner, Purpose, hidden_from_enforcement
from enlace_platform.auth import Principal
from enlace_platform.runtime import ServiceRuntime, create_service_app
from enlace_platform.settings import ServiceSettings
from tests.support.harness import bearer, free_port, running_app, directory_for_tests

METADATA = MetaData()  # not SQLModel's: these tables belong to no service
THINGS = Table("owned_thing", METADATA, Column("id", String, primary_key=True), Column("agency_id", String),
               Column("jurisdiction", String))
# Without a jurisdiction column: the coordinator's auditor follows the agencies seen acting from its jurisdiction.
GADGETS = Table("owned_gadget", METADATA, Column("id", String, primary_key=True), Column("agency_id", String))

SCOPE = {
    "thing": lambda owner: select(THINGS.c.id).where(owner.owns(THINGS.c.agency_id, THINGS.c.jurisdiction)),
    "gadget": lambda owner: select(GADGETS.c.id).where(owner.owns(GADGETS.c.agency_id)),
}
AGENCIES = {"MX-INM": ("migration_authority", "MX"), "MX-COMAR": ("asylum_office", "MX"),
            "MX-PSI": ("psychosocial", "MX"), "MX-COORD": ("coordinator", "MX"),
            "GT-IGM": ("migration_authority", "GT"), "GT-COORD": ("coordinator", "GT")}


def _router() -> APIRouter:
    router = APIRouter(dependencies=[Purpose("case_management")])
    reader = Annotated[Principal, Allowed(Permission.READ_CASES)]

    @router.get("/things/{thing_id}")
    async def read_thing(thing_id: str, principal: reader) -> dict:
        return {"id": thing_id}

    @router.get("/gadgets/{gadget_id}")
    async def read_gadget(gadget_id: str, principal: reader) -> dict:
        return {"id": gadget_id}

    return router


def _token(dev_issuer_dir: Path, agency_id: str, role: str = "caseworker") -> dict[str, str]:
    agency_type, jurisdiction = AGENCIES[agency_id]
    return bearer(dev_issuer_dir, agency_id, agency_type, jurisdiction, roles=[role])


@pytest.fixture
async def client(tmp_path: Path, dev_issuer_dir: Path):
    settings = ServiceSettings(service_name="scoped", database_url=f"sqlite+aiosqlite:///{tmp_path / 's.db'}",
                               kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens: API only
                               auth_dev_public_key_path=str(dev_issuer_dir / "public.pem"), log_json=False)
    runtime = ServiceRuntime(settings=settings, tables=[THINGS, GADGETS], agencies=directory_for_tests())
    app = create_service_app(title="t", description="t", runtime=runtime, routers=[_router()], audit_scope=SCOPE)
    async with running_app(app) as client:
        async with runtime.sessions() as session:
            await session.exec(insert(THINGS).values([
                {"id": "inm-thing", "agency_id": "MX-INM", "jurisdiction": "MX"},
                {"id": "psi-thing", "agency_id": "MX-PSI", "jurisdiction": "MX"},
                {"id": "gt-thing", "agency_id": "GT-IGM", "jurisdiction": "GT"}]))
            await session.exec(insert(GADGETS).values([{"id": "inm-gadget", "agency_id": "MX-INM"},
                                                       {"id": "gt-gadget", "agency_id": "GT-IGM"}]))
            await session.commit()
        # Who touched what: (actor, path).
        for actor, path in [("MX-INM", "/things/inm-thing"), ("MX-COMAR", "/things/inm-thing"),
                            ("GT-IGM", "/things/inm-thing"), ("MX-COMAR", "/things/psi-thing"),
                            ("MX-COMAR", "/things/nobodys"), ("GT-IGM", "/things/gt-thing"),
                            ("MX-COMAR", "/things/gt-thing"), ("MX-INM", "/gadgets/inm-gadget"),
                            ("GT-IGM", "/gadgets/inm-gadget"), ("MX-COMAR", "/gadgets/gt-gadget")]:
            assert (await client.get(path, headers=_token(dev_issuer_dir, actor))).status_code == 200
        yield client


async def _seen(client, dev_issuer_dir: Path, auditor: str, **filters) -> set[tuple[str, str]]:
    response = await client.get("/audit", headers=_token(dev_issuer_dir, auditor, "auditor"), params=filters)
    assert response.status_code == 200, response.text
    return {(e["agency_id"], e["object_id"]) for e in response.json()["items"] if e["object_type"] != "audit"}


async def test_an_agencys_auditor_sees_its_staff_and_anyone_on_its_objects_and_nothing_else(client, dev_issuer_dir):
    assert await _seen(client, dev_issuer_dir, "MX-PSI") == {("MX-COMAR", "psi-thing")}
    # COMAR owns nothing: its own staff's rows only, its probes of others' objects included.
    assert await _seen(client, dev_issuer_dir, "MX-COMAR") == {
        ("MX-COMAR", "inm-thing"), ("MX-COMAR", "psi-thing"), ("MX-COMAR", "nobodys"), ("MX-COMAR", "gt-thing"),
        ("MX-COMAR", "gt-gadget")}


async def test_an_enforcement_auditor_sees_others_acts_on_its_objects_but_not_who_acted(client, dev_issuer_dir):
    response = await client.get("/audit", headers=_token(dev_issuer_dir, "MX-INM", "auditor"))
    entries = [e for e in response.json()["items"] if e["object_type"] != "audit"]
    assert {(e["agency_id"], e["object_id"]) for e in entries} == {
        ("MX-INM", "inm-thing"), (None, "inm-thing"), ("MX-INM", "inm-gadget"), (None, "inm-gadget")}
    others = [e for e in entries if e["agency_id"] is None]
    assert len(others) == 3, "MX-COMAR's and GT-IGM's reads of the thing, GT-IGM's of the gadget"
    assert all(e["user_id"] is None and e["roles"] == [] and e["trace_id"] is None for e in others)
    assert all(e["route"] and e["action"] == "read" and e["status"] == 200 and e["at"] for e in others)
    own = [e for e in entries if e["agency_id"] == "MX-INM"]
    assert all(e["user_id"] and e["roles"] == ["caseworker"] for e in own), "its own staff stay named"


async def test_the_coordinators_auditor_adds_other_jurisdictions_actors_on_objects_owned_in_its_own(
        client, dev_issuer_dir):
    mx_staff = {("MX-INM", "inm-thing"), ("MX-COMAR", "inm-thing"), ("MX-COMAR", "psi-thing"),
                ("MX-COMAR", "nobodys"), ("MX-COMAR", "gt-thing"), ("MX-INM", "inm-gadget"), ("MX-COMAR", "gt-gadget")}
    assert await _seen(client, dev_issuer_dir, "MX-COORD") == mx_staff | {("GT-IGM", "inm-thing"),
                                                                         ("GT-IGM", "inm-gadget")}
    assert await _seen(client, dev_issuer_dir, "GT-COORD") == {
        ("GT-IGM", "inm-thing"), ("GT-IGM", "gt-thing"), ("GT-IGM", "inm-gadget"),
        ("MX-COMAR", "gt-thing"), ("MX-COMAR", "gt-gadget")}


async def test_filters_narrow_the_view_and_never_widen_it(client, dev_issuer_dir):
    assert await _seen(client, dev_issuer_dir, "MX-PSI", agency_id="MX-COMAR") == {("MX-COMAR", "psi-thing")}
    assert await _seen(client, dev_issuer_dir, "MX-INM", object_id="psi-thing") == set()
    assert await _seen(client, dev_issuer_dir, "MX-PSI", agency_id="MX-INM") == set()
    assert await _seen(client, dev_issuer_dir, "MX-COORD", object_type="gadget", agency_id="GT-IGM") == \
        {("GT-IGM", "inm-gadget")}
    # The enforcement auditor cannot search for who acted on its objects: no filter is an oracle.
    assert await _seen(client, dev_issuer_dir, "MX-INM", agency_id="MX-COMAR") == set()
    assert await _seen(client, dev_issuer_dir, "MX-INM", object_type="gadget", agency_id="GT-IGM") == set()
    assert await _seen(client, dev_issuer_dir, "MX-INM", agency_id="MX-INM", object_id="inm-thing") == \
        {("MX-INM", "inm-thing")}
    assert await _seen(client, dev_issuer_dir, "GT-COORD", agency_id="MX-INM") == set()


async def test_paging_walks_the_same_view(client, dev_issuer_dir):
    auditor = _token(dev_issuer_dir, "MX-INM", "auditor")
    seen, after = [], 0
    while after is not None:
        page = (await client.get("/audit", headers=auditor, params={"after": after, "limit": 1,
                                                                     "object_type": "thing"})).json()
        seen += [(e["agency_id"], e["object_id"]) for e in page["items"]]
        after = page["next_after"]
    assert seen == [("MX-INM", "inm-thing"), (None, "inm-thing"), (None, "inm-thing")]


def test_an_owner_is_one_agency_or_for_a_coordinator_a_jurisdiction():
    def principal(agency_id):
        agency_type, jurisdiction = AGENCIES[agency_id]
        return Principal(subject="u", agency_id=agency_id, agency_type=agency_type, jurisdiction=jurisdiction,
                         roles=("auditor",))

    assert Owner.of(principal("MX-COMAR")) == Owner(agency_id="MX-COMAR")
    assert Owner.of(principal("GT-COORD")) == Owner(jurisdiction="GT")
    assert Owner.of(principal("MX-INM")) == Owner(agency_id="MX-INM", enforcement=True)
    marked = Principal(subject="u", agency_id="MX-FISC", agency_type="prosecutor", jurisdiction="MX",
                       roles=("auditor",), enforcement=True)
    assert Owner.of(marked) == Owner(agency_id="MX-FISC", enforcement=True), "the directory's mark decides"


def test_a_scope_hidden_from_enforcement_follows_nothing_for_an_enforcement_owner():
    hidden = hidden_from_enforcement(SCOPE)
    inm, comar = Owner(agency_id="MX-INM", enforcement=True), Owner(agency_id="MX-COMAR")
    assert str(hidden["thing"](inm)).split()[-2:] == ["WHERE", "false"], "its own staff's rows only"
    assert str(hidden["thing"](comar)) == str(SCOPE["thing"](comar)), "protection owners follow what they did"
