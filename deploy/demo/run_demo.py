"""The demo flow against the running services, as the agencies' systems would drive it.

Mexico's migration authority (MX-INM) meets a group at the southern border: a mother who fears
return with her 8-year-old son, a 15-year-old boy travelling with an unrelated adult, and a young
woman whose age is disputed. It records consent (the mother agrees to be referred to the asylum
office; an officer applies the mandatory child-protection override for the two children), and
screens everyone. Then:

* the referral service routes each need: the children to child protection (MX-PFPNNA, lead), the
  mother to the asylum office (MX-COMAR); each referral opens a protection hold;
* intake refuses to remove the held persons (409 naming the hold and the referral);
* the agencies act on their inboxes: COMAR receives and accepts; PFPNNA receives, accepts, starts
  and completes the boy's referral with CHILD_PLACED_IN_CARE, which releases his hold; the outcome
  code comes back to intake's case view;
* MX-COMAR reads the mother's record (allowed by its open referral and her consent); MX-INM's
  supervisor erases the unrelated adult (crypto-shredding; reading him then answers 410); MX-INM's
  own auditor lists who read the mother's record in intake's audit log (MX-COMAR's read included, its
  agency withheld by the information barrier: her record is INM's, the protection work is not);
* every agency's webhook receiver (run here) gets signed webhooks and verifies them with the
  Standard Webhooks reference library.

Each user has one role (caseworker, supervisor, coordinator or auditor), as docs/security.md sets out.

Names are invented. Environment: DEMO_INTAKE_URL, DEMO_REFERRAL_URL, DEMO_NOTIFICATION_URL,
DEMO_RECEIVER_PORT, DEMO_KEY_DIR (the dev issuer's keys), DEMO_SUMMARY_PATH (write a JSON summary).
"""

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "libs"))
from enlace_platform.dev_issuer import DEFAULT_KEY_DIR, ensure_keypair, mint, roster_entry  # noqa: E402

INTAKE = os.environ.get("DEMO_INTAKE_URL", "http://127.0.0.1:8001")
REFERRAL = os.environ.get("DEMO_REFERRAL_URL", "http://127.0.0.1:8002")
NOTIFICATION = os.environ.get("DEMO_NOTIFICATION_URL", "http://127.0.0.1:8003")
RECEIVER_PORT = int(os.environ.get("DEMO_RECEIVER_PORT", "8099"))
KEY_DIR = Path(os.environ.get("DEMO_KEY_DIR", DEFAULT_KEY_DIR))
SUMMARY_PATH = os.environ.get("DEMO_SUMMARY_PATH")
AGENCIES = ("MX-INM", "MX-PFPNNA", "MX-COMAR", "MX-COORD")
console = Console(width=None if sys.stdout.isatty() else 200)


class DemoFailed(Exception):
    pass


def token(agency_id: str, role: str = "caseworker") -> dict[str, str]:
    """A user of the agency with one role (docs/security.md): least privilege, as real staff would have."""
    entry = roster_entry(agency_id)
    key = ensure_keypair(KEY_DIR).read_bytes()
    signed = mint(key, agency_id=agency_id, agency_type=entry["type"], jurisdiction=entry["jurisdiction"],
                  roles=[role], subject=f"{agency_id.lower()}-{role}")
    return {"authorization": f"Bearer {signed}"}


class Receiver:
    """The agencies' webhook endpoints: each verifies signatures with its own secret."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]  # this run's hooks only; earlier runs never mix in
        self.secrets: dict[str, str] = {}
        self.received: list[dict] = []

    async def hook(self, request: Request) -> Response:
        if request.path_params["run"] != self.run_id:
            return Response(status_code=410)  # a stale subscription from an earlier run: gone
        agency = request.path_params["agency"]
        body = await request.body()
        try:
            Webhook(self.secrets[agency]).verify(body, dict(request.headers))
            verified = True
        except (KeyError, WebhookVerificationError):
            verified = False
        self.received.append({"agency": agency, "webhook_id": request.headers.get("webhook-id"),
                              "verified": verified, "payload": json.loads(body)})
        return Response(status_code=204 if verified else 401)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks/{run}/{agency}", self.hook, methods=["POST"])])


async def until(what: str, check: Callable[[], Awaitable[object]], timeout: float = 60) -> object:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise DemoFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def ok(response: httpx.Response) -> dict:
    if response.status_code >= 400:
        raise DemoFailed(f"{response.request.method} {response.request.url} -> {response.status_code}: {response.text}")
    return response.json() if response.content else {}


FAMILY = {
    "place": "Ciudad Hidalgo, Chiapas — border post",
    "persons": [
        {"given_names": "Lucía", "family_names": "Demo Ramos", "sex": "female", "estimated_age": 34,
         "nationality": "HND", "languages": ["es"],
         "documents": [{"type": "passport", "number": "DEMO-P-0001", "issuing_country": "HND"}]},
        {"given_names": "Mateo", "family_names": "Demo Ramos", "sex": "male", "estimated_age": 8,
         "nationality": "HND", "languages": ["es"]},
        {"given_names": "Kevin", "family_names": "Demo Cruz", "sex": "male", "estimated_age": 15,
         "nationality": "GTM", "languages": ["es"]},
        {"given_names": "Óscar", "family_names": "Demo Pérez", "sex": "male", "estimated_age": 41,
         "nationality": "GTM", "languages": ["es"]},
        {"given_names": "Ana", "family_names": "Demo Díaz", "sex": "female", "estimated_age": 19, "age_disputed": True,
         "nationality": "SLV", "languages": ["es"]},
    ],
    "relationships": [{"from_person": 0, "to_person": 1, "kind": "parent"},
                      {"from_person": 3, "to_person": 2, "kind": "unrelated_adult"}],
}
MOTHER, SON, BOY, ADULT, DISPUTED = range(5)


async def run(http: httpx.AsyncClient, receiver: Receiver, subscriptions: list) -> dict:
    headers = {agency: token(agency, "coordinator" if agency.endswith("-COORD") else "caseworker")
               for agency in AGENCIES}
    inm, pfpnna, comar = headers["MX-INM"], headers["MX-PFPNNA"], headers["MX-COMAR"]
    inm_supervisor = token("MX-INM", "supervisor")
    for agency in AGENCIES:
        supervisor = token(agency, "supervisor")  # subscriptions are the supervisor's to manage
        sub = ok(await http.post(f"{NOTIFICATION}/subscriptions", headers=supervisor, json={
            "url": f"http://127.0.0.1:{RECEIVER_PORT}/hooks/{receiver.run_id}/{agency}",
            "event_types": ["referral.*", "protection_hold.*"]}))
        receiver.secrets[agency] = sub["secret"]
        subscriptions.append((sub["id"], supervisor))

    case = ok(await http.post(f"{INTAKE}/cases", headers={**inm, "Idempotency-Key": str(uuid.uuid4())},
                              json={**FAMILY, "encountered_at": (datetime.now(UTC) - timedelta(hours=2)).isoformat()}))
    case_id, person = case["id"], [p["id"] for p in case["persons"]]
    console.print(f"[bold]1.[/bold] MX-INM registered case {case_id}: 5 persons, 2 relationships")

    base = f"{INTAKE}/cases/{case_id}/persons"
    ok(await http.post(f"{base}/{person[MOTHER]}/consents", headers=inm,
                       json={"recipient_agency_type": "asylum_office", "purpose": "referral"}))
    for child in (BOY, DISPUTED):
        ok(await http.post(f"{base}/{person[child]}/consents", headers=inm_supervisor, json={
            "recipient_agency_type": "child_protection", "purpose": "referral", "basis": "mandatory_override",
            "reason": "Unaccompanied child: mandatory child-protection referral (Ley de Migración art. 112)"}))
    console.print("[bold]2.[/bold] Consent: the mother agrees to the asylum office; "
                  "mandatory child-protection override for the two children")

    answers = {
        MOTHER: {"fear_of_return": True, "wishes_to_seek_asylum": True},
        SON: {"travelling_with_parent_or_guardian": True},
        BOY: {"fear_of_return": True, "travelling_with_parent_or_guardian": False,
              "travelling_with_unrelated_adult": True},
        ADULT: {"fear_of_return": False},
        DISPUTED: {"travelling_with_parent_or_guardian": False},
    }
    needs: dict[int, list[str]] = {}
    for index, answer in answers.items():
        screening = ok(await http.post(f"{INTAKE}/cases/{case_id}/screenings", headers=inm,
                                       json={"person_id": person[index], **answer}))
        needs[index] = [n["code"] for n in screening["needs"]]
    expected_referrals = sum(len(codes) for codes in needs.values())
    screened = Table(title=f"3. Screening (rules {screening['rules_version']}): needs per person")
    for column in ("person", "needs"):
        screened.add_column(column)
    for index, codes in needs.items():
        screened.add_row(FAMILY["persons"][index]["given_names"], ", ".join(codes) or "none")
    console.print(screened)

    coordinator = headers["MX-COORD"]  # the migration authority sees status and hold only (docs/security.md)

    async def referrals_of_case():
        page = ok(await http.get(f"{REFERRAL}/referrals", headers=coordinator,
                                 params={"case_id": case_id, "direction": "jurisdiction", "limit": 100}))
        return page["items"] if len(page["items"]) >= expected_referrals else None
    referrals = await until("the referrals", referrals_of_case)
    by_person = {(r["person_id"], r["need_code"]): r for r in referrals}

    async def holds_in_intake():
        view = ok(await http.get(f"{INTAKE}/cases/{case_id}", headers=inm))
        active = {h["person_id"] for h in view["holds"] if h["status"] == "active"}
        return view if {person[MOTHER], person[BOY]} <= active else None
    await until("protection holds at intake", holds_in_intake)
    refused = await http.post(f"{base}/{person[BOY]}/removal-orders", headers=inm_supervisor,
                              json={"destination_country": "GTM"})
    if refused.status_code != 409:
        raise DemoFailed(f"removal of a held child was not refused: {refused.status_code} {refused.text}")
    console.print(f"[bold]4.[/bold] Removal of the 15-year-old refused (409): {refused.json()['detail']}")

    boy_referral = by_person[(person[BOY], "UNACCOMPANIED_CHILD")]
    mother_referral = by_person[(person[MOTHER], "INTERNATIONAL_PROTECTION")]

    async def act(agency_headers, referral, action, **extra):
        return ok(await http.post(f"{REFERRAL}/referrals/{referral['id']}/actions", headers=agency_headers,
                                  json={"action": action, **extra}))
    for action in ("receive", "accept"):
        await act(comar, mother_referral, action)
    for action in ("receive", "accept", "start"):
        await act(pfpnna, boy_referral, action)
    await act(pfpnna, boy_referral, "complete", outcome_code="CHILD_PLACED_IN_CARE")
    console.print("[bold]5.[/bold] MX-COMAR accepted the asylum referral; MX-PFPNNA completed the boy's "
                  "referral: CHILD_PLACED_IN_CARE")

    async def outcome_at_intake():
        view = ok(await http.get(f"{INTAKE}/cases/{case_id}", headers=inm))
        outcome = [r for r in view["referrals"] if r["referral_id"] == boy_referral["id"] and r["outcome_code"]]
        released = [h for h in view["holds"] if h["person_id"] == person[BOY] and h["status"] == "released"]
        return view if outcome and released else None
    view = await until("the outcome and the released hold at intake", outcome_at_intake)
    holds = Table(title="6. Intake's view: protection holds")
    for column in ("person", "need", "referral", "status", "release", "outcome"):
        holds.add_column(column)
    names = {p["id"]: p["given_names"] for p in view["persons"]}
    for hold in view["holds"]:
        holds.add_row(names[hold["person_id"]], hold["need_code"] or "", hold["referral_id"] or "", hold["status"],
                      hold["release_reason"] or "", hold["outcome_code"] or "")
    console.print(holds)

    final = ok(await http.get(f"{REFERRAL}/referrals", headers=coordinator,
                              params={"case_id": case_id, "direction": "jurisdiction", "limit": 100}))["items"]
    seen_by_inm = {r["id"]: r for r in ok(await http.get(f"{REFERRAL}/referrals", headers=inm, params={
        "case_id": case_id, "direction": "from", "limit": 100}))["items"]}
    table = Table(title="7. Referrals: the coordinator's view, and what MX-INM (enforcement) sees of the need, "
                        "the receiver and the outcome (a sensitive need's referral: not shown at all)")
    for column in ("referral", "person", "need", "to agency", "lead", "status", "outcome", "MX-INM sees"):
        table.add_column(column)
    for ref in final:
        inm_view = seen_by_inm.get(ref["id"])
        inm_sees = "not shown" if inm_view is None else " / ".join(
            str(inm_view.get(k) or "withheld") for k in ("need_code", "to_agency_id", "outcome_code"))
        table.add_row(ref["id"], names.get(ref["person_id"], "?"), ref["need_code"],
                      ref["to_agency_id"] or "(coordinator queue)", _lead(ref), ref["status"],
                      ref["outcome_code"] or "", inm_sees)
    console.print(table)
    if any(seen_by_inm.get(r["id"], {}).get("need_code") for r in final
           if r["need_code"] in ("INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED", "SGBV_SURVIVOR")):
        raise DemoFailed("the migration authority sees the need code of a protection referral")

    mother_details = ok(await http.get(f"{base}/{person[MOTHER]}", headers=comar))
    console.print(f"[bold]8.[/bold] MX-COMAR reads the mother's record (its open referral and her consent allow it): "
                  f"{len(mother_details.get('documents', []))} document(s)")

    erasure = await http.post(f"{base}/{person[ADULT]}/erasure", headers=inm_supervisor,
                              json={"reason_code": "ERASURE_REQUEST"})
    ok(erasure)
    gone = await http.get(f"{base}/{person[ADULT]}", headers=inm)
    if gone.status_code != 410:
        raise DemoFailed(f"an erased person is still readable: {gone.status_code} {gone.text}")
    console.print("[bold]9.[/bold] MX-INM's supervisor erased the unrelated adult (no hold, no referral): his key "
                  "is destroyed, reading him now answers 410")

    inm_auditor = token("MX-INM", "auditor")
    entries = ok(await http.get(f"{INTAKE}/audit", headers=inm_auditor,
                                params={"object_id": person[MOTHER], "limit": 500}))["items"]
    audit = Table(title="10. Intake's audit log for the mother (read by MX-INM's auditor: its staff, and anyone on its "
                        "records, another agency's actor withheld)")
    for column in ("at", "agency", "user", "action", "route", "purpose", "status", "trace"):
        audit.add_column(column)
    for entry in entries:
        audit.add_row(entry["at"][11:19], entry["agency_id"] or "(withheld)", entry["user_id"] or "(withheld)",
                      entry["action"], entry["route"],
                      entry["purpose"], str(entry["status"]), (entry["trace_id"] or "")[:12])
    console.print(audit)
    # The information barrier: MX-INM, an enforcement agency, sees that another agency read her record, not which.
    if "MX-INM" not in {e["agency_id"] for e in entries} or not any(
            e["agency_id"] is None and e["user_id"] is None and e["action"] == "read" for e in entries):
        raise DemoFailed("the audit log does not show MX-INM's reads and another agency's read, its actor withheld")
    if any(e["agency_id"] not in ("MX-INM", None) for e in entries):
        raise DemoFailed("the audit log names another agency to MX-INM's auditor")

    wanted = {"referral.requested.v1", "referral.accepted.v1", "referral.completed.v1",
              "protection_hold.placed.v1", "protection_hold.released.v1"}
    async def webhooks_arrived():
        return wanted <= {h["payload"]["type"] for h in receiver.received}
    await until("the webhooks", webhooks_arrived)
    await asyncio.sleep(1)  # let the last deliveries of this flow arrive too
    return {"case_id": case_id, "referrals": len(final), "holds": len(view["holds"]),
            "erased_person_id": person[ADULT], "audit_entries_for_mother": len(entries),
            "event_types": sorted({"case.registered.v1", "case.screened.v1", "consent.changed.v1", "person.erased.v1",
                                   *(h["payload"]["type"] for h in receiver.received)})}


def _lead(referral: dict) -> str:
    """One lead among the case's open referrals; a closed one keeps the flag it had."""
    if not referral["is_lead"]:
        return ""
    return "yes" if referral["status"] not in ("completed", "cancelled", "failed", "rejected") else "(was lead)"


async def main() -> int:
    receiver = Receiver()
    server = uvicorn.Server(uvicorn.Config(receiver.app(), host="127.0.0.1", port=RECEIVER_PORT, log_level="warning"))
    serve = asyncio.create_task(server.serve())
    subscriptions: list[tuple[str, dict]] = []
    summary: dict | None = None
    try:
        async with httpx.AsyncClient(timeout=15) as http:
            summary = await run(http, receiver, subscriptions)
    except DemoFailed as exc:
        console.print(f"[red]Demo flow failed:[/red] {exc}")
    finally:
        async with httpx.AsyncClient(timeout=10) as http:
            for subscription_id, headers in subscriptions:  # the demo's receiver goes away with it
                await http.delete(f"{NOTIFICATION}/subscriptions/{subscription_id}", headers=headers)
        server.should_exit = True
        await serve

    hooks = Table(title="11. Webhooks received (signatures verified with the Standard Webhooks library)")
    for column in ("agency", "webhook-id", "type", "referral", "signature"):
        hooks.add_column(column)
    for hook in receiver.received:
        hooks.add_row(hook["agency"], hook["webhook_id"], hook["payload"]["type"],
                      hook["payload"]["data"].get("referral_id", ""), "valid" if hook["verified"] else "INVALID")
    console.print(hooks)
    verified = bool(receiver.received) and all(h["verified"] for h in receiver.received)
    if summary is None or not verified:
        console.print("[red]Demo flow incomplete: see the service logs (.run/logs/).[/red]")
        return 1
    if SUMMARY_PATH:
        Path(SUMMARY_PATH).write_text(json.dumps({**summary, "webhooks": len(receiver.received)}))
    console.print("[green]Demo flow complete.[/green] Traces: http://127.0.0.1:9411/zipkin/")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
