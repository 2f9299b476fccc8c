"""Roles in the notification API (docs/notification.md, Security): supervisors manage subscriptions,
secrets and redeliveries; caseworkers and supervisors read the delivery log; coordinators' and auditors'
staff get nothing here. In-process, without a broker (deliveries are written by the real handler)."""

import pytest
from fastapi.routing import APIRoute
from sqlmodel import select

from enlace_platform.access import Permission, required_permission
from enlace_platform.dev_issuer import mint
from notification.adapters.orm import DeliveryRow, SubscriptionRow
from notification.entrypoints.api import router
from notification.entrypoints.app import create_app
from notification.service_layer.handlers import make_referral_event_handler
from tests.support.harness import free_port, running_app
from tests.support.notification_support import event, notification_settings, referral_data, stored_secrets, supervisor

HOOK = "https://hooks.pfpnna.example/enlace"
MANAGE, READ = Permission.MANAGE_SUBSCRIPTIONS, Permission.READ_DELIVERIES

# Every route of the service (the platform's /audit, /metrics and health aside) and its permission.
EXPECTED = {
    ("POST", "/subscriptions"): MANAGE,
    ("GET", "/subscriptions"): MANAGE,
    ("GET", "/subscriptions/{subscription_id}"): MANAGE,
    ("PATCH", "/subscriptions/{subscription_id}"): MANAGE,
    ("DELETE", "/subscriptions/{subscription_id}"): MANAGE,
    ("POST", "/subscriptions/{subscription_id}/secret/rotation"): MANAGE,
    ("GET", "/subscriptions/{subscription_id}/deliveries"): READ,
    ("GET", "/deliveries"): READ,
    ("GET", "/deliveries/{delivery_id}"): READ,
    ("POST", "/deliveries/{delivery_id}/redelivery"): MANAGE,
}


@pytest.fixture
def settings(tmp_path, dev_issuer_dir):
    return notification_settings(tmp_path=tmp_path, bootstrap=f"127.0.0.1:{free_port()}", prefix="roles.",
                                 dev_issuer_dir=dev_issuer_dir, webhook_allow_loopback=False)


@pytest.fixture
async def api(settings):
    app = create_app(settings)
    async with running_app(app) as client:
        client.runtime = app.state.runtime
        yield client


def _as(dev_issuer_dir, *roles: str, agency=("MX-PFPNNA", "child_protection")) -> dict[str, str]:
    """A token of the agency with exactly these roles (none at all, too: bearer() would default to caseworker)."""
    token = mint((dev_issuer_dir / "private.pem").read_bytes(), agency_id=agency[0], agency_type=agency[1],
                 jurisdiction="MX", roles=list(roles))
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
async def world(api, settings, dev_issuer_dir):
    """PFPNNA's supervisor has subscribed, and one event made one delivery."""
    boss = supervisor(dev_issuer_dir, "MX-PFPNNA", "child_protection")
    r = await api.post("/subscriptions", headers=boss, json={"url": HOOK, "event_types": ["referral.*"]})
    assert r.status_code == 201, r.text
    sub = r.json()
    async with api.runtime.sessions() as session:
        await make_referral_event_handler(settings, api.runtime.agencies)(
            session, event("referral.requested.v1", referral_data()))
        await session.commit()
        [delivery] = (await session.exec(select(DeliveryRow))).all()
        # Dead, so that a permitted redelivery would change it.
        delivery.status = "dead"
        session.add(delivery)
        await session.commit()
    return sub, delivery.id


def _requests(sub_id: str, delivery_id: str) -> dict[tuple[str, str], tuple[str, dict | None]]:
    """A concrete, otherwise valid request per route."""
    body = {"url": HOOK + "/2", "event_types": ["referral.*"]}
    concrete = {"subscription_id": sub_id, "delivery_id": delivery_id}
    bodies = {("POST", "/subscriptions"): body, ("PATCH", "/subscriptions/{subscription_id}"): {"email": "a@b.example"}}
    return {(m, p): (p.format(**concrete), bodies.get((m, p))) for m, p in EXPECTED}


async def test_every_route_declares_its_one_permission():
    found = {}
    for route in router.routes:
        assert isinstance(route, APIRoute)
        declared = [d.call.permission for d in route.dependant.dependencies if hasattr(d.call, "permission")]
        assert len(declared) == 1 and declared[0] == required_permission(route.dependant), route.path
        found.update({(method, route.path): declared[0] for method in route.methods})
    assert found == EXPECTED


async def test_routes_serve_the_notification_purpose_in_the_audit_log(api, world, dev_issuer_dir):
    sub, _ = world
    auditor = _as(dev_issuer_dir, "auditor")
    r = await api.get("/audit", headers=auditor, params={"object_id": sub["id"]})
    assert r.status_code == 200, r.text
    [created] = r.json()["items"]
    assert (created["method"], created["route"], created["object_type"], created["purpose"], created["status"]) == (
        "POST", "/subscriptions", "subscription", "notification", 201)
    assert created["roles"] == ["supervisor"]


@pytest.mark.parametrize("roles", [("supervisor",), ("caseworker", "supervisor")])
async def test_a_supervisor_may_do_everything_here(api, world, dev_issuer_dir, roles):
    sub, delivery_id = world
    headers = _as(dev_issuer_dir, *roles)
    for (method, template), (path, body) in _requests(sub["id"], delivery_id).items():
        if (method, template) == ("DELETE", "/subscriptions/{subscription_id}"):
            continue  # last, or the redelivery finds the subscription disabled
        r = await api.request(method, path, headers=headers, json=body)
        assert r.status_code in (200, 201, 202), (method, path, r.text)
    assert (await api.delete(f"/subscriptions/{sub['id']}", headers=headers)).status_code == 204


async def test_a_caseworker_reads_the_delivery_log_but_manages_nothing(api, world, dev_issuer_dir):
    sub, delivery_id = world
    caseworker = _as(dev_issuer_dir, "caseworker")
    for (method, template), (path, body) in _requests(sub["id"], delivery_id).items():
        r = await api.request(method, path, headers=caseworker, json=body)
        if EXPECTED[(method, template)] is READ:
            assert r.status_code == 200, (method, path, r.text)
        else:
            assert r.status_code == 403, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["permission"] == "subscriptions:manage"
            assert sub["secret"] not in r.text and "whsec_" not in r.text
    delivered = (await api.get(f"/deliveries/{delivery_id}", headers=caseworker)).json()
    assert delivered["id"] == delivery_id and delivered["status"] == "dead", "the redelivery was refused"
    async with api.runtime.sessions() as session:
        row = await session.get(SubscriptionRow, sub["id"])
        assert (row.active, row.email) == (True, None)
        assert len((await session.exec(select(SubscriptionRow))).all()) == 1, "no subscription was created"
    assert await stored_secrets(api.runtime, sub["id"]) == (sub["secret"], None), "the secret was not rotated"


@pytest.mark.parametrize("roles", [("coordinator",), ("auditor",), ("caseworker-in-training",), ()])
async def test_coordinator_auditor_unknown_or_no_role_get_403_everywhere(api, world, dev_issuer_dir, roles):
    sub, delivery_id = world
    headers = _as(dev_issuer_dir, *roles)
    for (method, _), (path, body) in _requests(sub["id"], delivery_id).items():
        r = await api.request(method, path, headers=headers, json=body)
        assert r.status_code == 403, (method, path, roles, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    async with api.runtime.sessions() as session:
        assert (await session.get(DeliveryRow, delivery_id)).status == "dead"
        assert (await session.get(SubscriptionRow, sub["id"])).active


async def test_the_coordinators_supervisor_still_cannot_touch_another_agencys_objects(api, world, dev_issuer_dir):
    # Roles never widen the agency boundary: another agency's subscription or delivery stays 404.
    sub, delivery_id = world
    for agency in (("MX-COORD", "coordinator"), ("MX-COMAR", "asylum_office")):
        headers = _as(dev_issuer_dir, "caseworker", "supervisor", "coordinator", agency=agency)
        for (method, template), (path, body) in _requests(sub["id"], delivery_id).items():
            r = await api.request(method, path, headers=headers, json=body)
            if "{" in template:
                assert r.status_code == 404, (agency, method, path, r.text)
            else:
                assert r.status_code in (200, 201), (agency, method, path, r.text)
                assert sub["id"] not in r.text and delivery_id not in r.text


async def test_no_token_is_401_before_any_role_check(api, world):
    sub, delivery_id = world
    for (method, _), (path, body) in _requests(sub["id"], delivery_id).items():
        r = await api.request(method, path, json=body)
        assert r.status_code == 401, (method, path, r.text)
