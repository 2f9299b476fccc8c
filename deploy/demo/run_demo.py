"""The demo flow against the running services: screening → referral → signed webhook.

Plays three agencies of the demo directory: Mexico's migration authority (INM) registers a
15-year-old travelling alone who fears return; the child-protection agency (PFPNNA) and the
asylum office (COMAR) have webhook subscriptions, served by a small receiver started here that
verifies every signature with the Standard Webhooks reference library.
"""

import asyncio
import json
import os
import sys
import uuid
from datetime import UTC, datetime
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
console = Console(width=None if sys.stdout.isatty() else 200)


def token(agency_id: str, roles: list[str]) -> dict[str, str]:
    entry = roster_entry(agency_id)
    key = ensure_keypair(DEFAULT_KEY_DIR).read_bytes()
    tok = mint(key, agency_id=agency_id, agency_type=entry["type"], jurisdiction=entry["jurisdiction"], roles=roles)
    return {"authorization": f"Bearer {tok}"}


class Receiver:
    """An agency's webhook endpoint: verifies each signature, keeps what it received."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]  # this run's hooks only; earlier runs never mix in
        self.secrets: dict[str, str] = {}
        self.received: list[dict] = []
        self.arrived = asyncio.Event()

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
                              "verified": verified, "payload": json.loads(body), "url": str(request.url)})
        self.arrived.set()
        return Response(status_code=204 if verified else 401)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hooks/{run}/{agency}", self.hook, methods=["POST"])])


async def main() -> int:
    receiver = Receiver()
    server = uvicorn.Server(uvicorn.Config(receiver.app(), host="127.0.0.1", port=RECEIVER_PORT, log_level="warning"))
    serve = asyncio.create_task(server.serve())
    inm, pfpnna, comar = token("MX-INM", ["caseworker"]), token("MX-PFPNNA", ["caseworker"]), token("MX-COMAR", ["caseworker"])
    subscriptions: list[tuple[str, dict]] = []
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for agency, headers in (("MX-PFPNNA", pfpnna), ("MX-COMAR", comar)):
                r = await http.post(f"{NOTIFICATION}/subscriptions", headers=headers, json={
                    "url": f"http://127.0.0.1:{RECEIVER_PORT}/hooks/{receiver.run_id}/{agency}",
                    "event_types": ["referral.requested.v1"]})
                r.raise_for_status()
                receiver.secrets[agency] = r.json()["secret"]
                subscriptions.append((r.json()["id"], headers))

            r = await http.post(f"{INTAKE}/cases", headers=inm, json={
                "place": "Ciudad Hidalgo, Chiapas — border post",
                "encountered_at": datetime.now(UTC).isoformat(),
                "persons": [{"given_names": "Demo", "family_names": "Person", "sex": "female",
                             "estimated_age": 15, "nationality": "HND", "languages": ["es"]}]})
            r.raise_for_status()
            case = r.json()
            person_id = case["persons"][0]["id"]
            r = await http.post(f"{INTAKE}/cases/{case['id']}/screenings", headers=inm, json={
                "person_id": person_id, "fear_of_return": True, "travelling_with_parent_or_guardian": False})
            r.raise_for_status()
            screening = r.json()

            referrals: list[dict] = []
            for _ in range(150):
                r = await http.get(f"{REFERRAL}/referrals", headers=inm, params={"case_id": case["id"]})
                r.raise_for_status()
                referrals = r.json()["items"]
                if len(referrals) >= len(screening["needs"]):
                    break
                await asyncio.sleep(0.2)

            deadline = asyncio.get_running_loop().time() + 30
            while len(receiver.received) < len(referrals) and asyncio.get_running_loop().time() < deadline:
                receiver.arrived.clear()
                try:
                    await asyncio.wait_for(receiver.arrived.wait(), timeout=1)
                except TimeoutError:
                    pass
    finally:
        async with httpx.AsyncClient(timeout=10) as http:
            for subscription_id, headers in subscriptions:  # the demo's receiver goes away with it
                await http.delete(f"{NOTIFICATION}/subscriptions/{subscription_id}", headers=headers)
        server.should_exit = True
        await serve

    console.print(f"[bold]Case[/bold] {case['id']} registered by MX-INM; screening {screening['id']} found: "
                  + ", ".join(n["code"] for n in screening["needs"]))
    table = Table(title="Referrals")
    for col in ("referral id", "need", "to agency", "lead", "status"):
        table.add_column(col)
    for ref in referrals:
        table.add_row(ref["id"], ref["need_code"], ref["to_agency_id"] or "(coordinator queue)",
                      "yes" if ref["is_lead"] else "", ref["status"])
    console.print(table)
    hooks = Table(title="Webhooks received")
    for col in ("webhook target", "webhook-id", "type", "referral id", "signature"):
        hooks.add_column(col)
    for hook in receiver.received:
        hooks.add_row(hook["url"], hook["webhook_id"], hook["payload"]["type"], hook["payload"]["data"]["referral_id"],
                      "valid" if hook["verified"] else "INVALID")
    console.print(hooks)
    ok = bool(referrals) and len(receiver.received) >= len(referrals) and all(h["verified"] for h in receiver.received)
    console.print("[green]Demo flow complete.[/green]" if ok else "[red]Demo flow incomplete: see .run/logs/.[/red]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
