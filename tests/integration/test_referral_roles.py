"""Roles within an agency on the referral service: every route declares one permission, each role gets
what the policy grants and 403 otherwise, the coordinator agency's part in a referral needs the role
coordinator, and every access is in the audit log with its purpose."""

from fastapi.routing import APIRoute

from enlace_platform.access import Permission, required_permission
from referral.entrypoints.api import router as referral_router
from referral.entrypoints.directory_api import router as directory_router
from tests.support.referral_support import auth, ref, screened  # noqa: F401 - ref and auth are fixtures

P = Permission
# Every route of the service (the platform's /audit, /metrics and health aside) and its permission.
EXPECTED_PERMISSIONS = {
    ("GET", "/referrals"): P.READ_REFERRALS,
    ("POST", "/referrals"): P.ACT_ON_REFERRALS,
    ("GET", "/referrals/{referral_id}"): P.READ_REFERRALS,
    ("POST", "/referrals/{referral_id}/actions"): P.ACT_ON_REFERRALS,
    ("GET", "/referrals/{referral_id}/history"): P.READ_REFERRALS,
    ("POST", "/referrals/{referral_id}/notes"): P.ACT_ON_REFERRALS,
    ("GET", "/holds"): P.READ_REFERRALS,
    ("POST", "/holds/{hold_id}/release"): P.COORDINATE,
    ("GET", "/kpis"): P.READ_KPIS,
    ("GET", "/agencies"): P.READ_DIRECTORY,
    ("GET", "/agencies/{agency_id}"): P.READ_DIRECTORY,
    ("POST", "/agencies"): P.MANAGE_DIRECTORY,
    ("PATCH", "/agencies/{agency_id}"): P.MANAGE_DIRECTORY,
    ("DELETE", "/agencies/{agency_id}"): P.MANAGE_DIRECTORY,
    ("GET", "/services"): P.READ_DIRECTORY,
    ("GET", "/services/{service_id}"): P.READ_DIRECTORY,
    ("POST", "/services"): P.MANAGE_DIRECTORY,
    ("PUT", "/services/{service_id}"): P.MANAGE_DIRECTORY,
    ("DELETE", "/services/{service_id}"): P.MANAGE_DIRECTORY,
}


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


def test_every_route_declares_its_one_permission():
    found = {}
    for route in [*referral_router.routes, *directory_router.routes]:
        assert isinstance(route, APIRoute)
        declared = [d.call.permission for d in route.dependant.dependencies if hasattr(d.call, "permission")]
        assert len(declared) == 1 and declared[0] == required_permission(route.dependant), route.path
        found.update({(method, route.path): declared[0] for method in route.methods})
    assert found == EXPECTED_PERMISSIONS


async def test_each_kind_of_route_admits_exactly_the_roles_the_policy_grants(ref, auth):
    await ref.deliver(screened("UNACCOMPANIED_CHILD", age_band="12-17"))
    [child] = await ref.referrals(auth("MX-PFPNNA"))
    rid = child["id"]
    auditor, supervisor = auth("MX-PFPNNA", "auditor"), auth("MX-PFPNNA", "supervisor")
    # Reading and acting on referrals: caseworkers and supervisors, never auditors (they read the audit log).
    for path in ("/referrals", f"/referrals/{rid}", f"/referrals/{rid}/history", "/holds"):
        _problem(await ref.client.get(path, headers=auditor), 403)
        assert (await ref.client.get(path, headers=supervisor)).status_code == 200, path
    problem = _problem(await ref.act(rid, auditor, "receive"), 403)
    assert problem["permission"] == "referrals:act"
    _problem(await ref.client.post(f"/referrals/{rid}/notes", headers=auditor, json={"text": "hola"}), 403)
    assert (await ref.act(rid, supervisor, "receive")).status_code == 200
    # KPIs: supervisors and coordinators.
    _problem(await ref.client.get("/kpis", headers=auth("MX-PFPNNA")), 403)
    assert (await ref.client.get("/kpis", headers=supervisor)).status_code == 200
    # The directory: everyone working on referrals reads it; only the role coordinator writes it.
    _problem(await ref.client.get("/services", headers=auditor), 403)
    assert (await ref.client.get("/services", headers=auth("MX-INM"))).status_code == 200
    caseworker_at_coordinator = auth("MX-COORD", "caseworker")
    _problem(await ref.client.patch("/agencies/MX-PSI", headers=caseworker_at_coordinator, json={"name": "x"}), 403)
    r = await ref.client.patch("/agencies/MX-PSI", headers=auth("MX-COORD"), json={"name": "Psicosocial"})
    assert r.status_code == 200 and r.json()["name"] == "Psicosocial"
    # The coordinator's hold release needs the role coordinator, whatever the agency.
    [hold] = (await ref.client.get("/holds", headers=supervisor)).json()
    problem = _problem(await ref.client.post(f"/holds/{hold['id']}/release", headers=caseworker_at_coordinator), 403)
    assert problem["permission"] == "referrals:coordinate"


async def test_a_caseworker_of_the_coordinator_agency_sees_the_queue_but_cannot_act_as_coordinator(ref, auth):
    # Without consent, the survivor's referral waits in the queue; the child's goes to child protection.
    await ref.deliver(screened("SGBV_SURVIVOR", "UNACCOMPANIED_CHILD", age_band="12-17", scope=[]))
    caseworker, coordinator = auth("MX-COORD", "caseworker"), auth("MX-COORD")
    [queued] = await ref.referrals(caseworker, direction="queue")
    assert queued["allowed_actions"] == []  # the agency sees it, this user may do nothing with it
    child = next(r for r in await ref.referrals(coordinator, direction="jurisdiction")
                 if r["need_code"] == "UNACCOMPANIED_CHILD")
    for action, body in (("reassign", {"to_service_id": "MX-PFPNNA-1"}),
                         ("cancel", {"reason_code": "DUPLICATE", "reason_text": "duplicado"})):
        problem = _problem(await ref.act(queued["id"], caseworker, action, **body), 403)
        assert "needs the role coordinator" in problem["detail"]
        _problem(await ref.act(child["id"], caseworker, action, **body), 403)
    assert await ref.events("referral.reassigned.v1", "referral.cancelled.v1") == []
    seen = (await ref.client.get(f"/referrals/{child['id']}", headers=coordinator)).json()
    assert set(seen["allowed_actions"]) == {"cancel", "reassign"}
    r = await ref.act(child["id"], coordinator, "cancel", reason_code="DUPLICATE", reason_text="duplicado")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # Another agency, even with the role coordinator, does not see the referral at all.
    _problem(await ref.client.get(f"/referrals/{child['id']}", headers=auth("MX-COMAR", "coordinator")), 404)


async def test_reads_and_writes_are_audited_with_the_referral_purpose(ref, auth):
    # Needs not sensitive: MX-INM is not shown a referral of a sensitive need at all (firewall.referral_shown).
    await ref.deliver(screened("UNACCOMPANIED_CHILD", "MEDICAL_URGENT", age_band="12-17"))
    inm = auth("MX-INM")
    ids = {r["id"] for r in await ref.referrals(inm)}
    assert len(ids) == 2
    assert (await ref.client.get("/services", headers=inm)).status_code == 200
    case_id, person_id = await ref.registered_person()
    r = await ref.client.post("/referrals", headers=inm, json={
        "case_id": case_id, "person_id": person_id, "need_code": "MEDICAL_URGENT", "age_band": "18-59"})
    assert r.status_code == 201
    page = (await ref.client.get("/audit", headers=auth("MX-INM", "auditor"), params={"limit": 500})).json()
    [created] = [e for e in page["items"] if e["route"] == "/referrals" and e["method"] == "POST"]
    assert (created["object_type"], created["object_id"], created["action"]) == ("referral", r.json()["id"], "write")
    listing = [e for e in page["items"] if e["route"] == "/referrals" and e["method"] == "GET"]
    assert {e["object_id"] for e in listing} == ids
    assert {(e["object_type"], e["purpose"], e["action"], e["agency_id"]) for e in listing} == {
        ("referral", "protection_referral", "read", "MX-INM")}
    [directory] = [e for e in page["items"] if e["route"] == "/services"]
    assert directory["purpose"] == "directory"
