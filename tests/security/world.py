"""The world the security tests probe: the three services on the real broker, seeded through their APIs.

MX-INM registers a mother and her son; the mother consents to the asylum office and fears return, so the
referral service routes her asylum referral to MX-COMAR (with a protection hold), and MX-COMAR, which
subscribed to webhooks first, gets it delivered. Every id and every piece of personal data is kept here, so
the tests can look for them where they must not be.
"""

import functools
import itertools
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from fastapi.routing import APIRoute, iter_route_contexts

from enlace_platform.access import GRANTS, Permission, Role, required_permission
from enlace_platform.dev_issuer import ensure_keypair, mint
from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.security.statuses import StatusLog
from tests.support.harness import TEST_DIRECTORY, eventually, fast_settings

SERVICES = {"intake": (intake_app, IntakeSettings), "referral": (referral_app, ReferralSettings),
            "notification": (notification_app, NotificationSettings)}
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}
DOCS_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
DIRECTORY_SEED = str(TEST_DIRECTORY)

# The callers: (agency id, agency type, jurisdiction). MX-INM2 and MX-ASYL2 are unrelated agencies of the
# same type as MX-INM and MX-COMAR, known only by their tokens.
CALLERS: dict[str, tuple[str, str, str]] = {
    "inm": ("MX-INM", "migration_authority", "MX"),  # registered the case; sends the referral
    "comar": ("MX-COMAR", "asylum_office", "MX"),  # the referral's addressee; owns its webhook subscription
    "inm2": ("MX-INM2", "migration_authority", "MX"),
    "comar2": ("MX-ASYL2", "asylum_office", "MX"),
    "coord": ("MX-COORD", "coordinator", "MX"),  # the coordinator of the referral's jurisdiction
    "gt": ("GT-IGM", "migration_authority", "GT"),  # another jurisdiction
    "gtcoord": ("GT-COORD", "coordinator", "GT"),  # another jurisdiction's coordinator
}


@dataclass(frozen=True)
class RouteInfo:
    service: str
    method: str
    path: str
    permission: Permission | None

    @property
    def key(self) -> tuple[str, str, str]:
        return self.service, self.method, self.path

    @property
    def param_names(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def __str__(self) -> str:
        return f"{self.service} {self.method} {self.path}"


def routes_of(service: str, app) -> list[RouteInfo]:
    """Every API route of an app, from the app itself (FastAPI nests included routers in app.routes)."""
    found = []
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            for method in sorted(context.methods):
                found.append(RouteInfo(service, method, context.path, required_permission(context.dependant)))
    return found


def non_api_paths(app) -> set[str]:
    """Paths served by something other than an API route (FastAPI's docs, or a route the matrix would miss)."""
    return {getattr(c.original_route, "path", repr(c.original_route)) for c in iter_route_contexts(app.routes)
            if not isinstance(c.original_route, APIRoute)}


@functools.cache
def all_routes() -> tuple[RouteInfo, ...]:
    """The routes of the three apps as built from today's code (not started: nothing listens or connects)."""
    routes = []
    with tempfile.TemporaryDirectory(prefix="enlace-routes-") as scratch:
        for name, (create, settings_class) in SERVICES.items():
            settings = fast_settings(settings_class, tmp_path=Path(scratch), bootstrap="127.0.0.1:9",
                                     prefix="routes.", dev_issuer_dir=Path(scratch))
            routes += routes_of(name, create(settings))
    return tuple(routes)


# Guatemala's identity provider: the one issuer trusted for GT's agencies (the development issuer for the others).
GT_ISSUER = "https://idp.gt.example"
DEV_ISSUER = "enlace-dev-issuer"
# An agency no directory holds, whose token claims to coordinate Mexico.
PHANTOM = ("MX-FANTASMA", "coordinator", "MX")


class Tokens:
    """Tokens for every caller, and the kinds the services must refuse. GT's agencies get their tokens from
    Guatemala's identity provider (a key pair of its own), the others from the development issuer."""

    def __init__(self, issuer_dir: Path, tmp: Path) -> None:
        self._key = (issuer_dir / "private.pem").read_bytes()
        self._dev_public = issuer_dir / "public.pem"
        self._foreign_key = ensure_keypair(tmp / "foreign-issuer").read_bytes()
        self._gt_dir = tmp / "gt-issuer"
        self._gt_key = ensure_keypair(self._gt_dir).read_bytes()

    def trusted_issuers(self) -> dict[str, dict[str, str]]:
        """The services' auth_trusted_issuers: Guatemala's IdP for GT, the development issuer for every other."""
        return {"*": {"issuer": DEV_ISSUER, "public_key_path": str(self._dev_public)},
                "GT": {"issuer": GT_ISSUER, "public_key_path": str(self._gt_dir / "public.pem")}}

    def _mint(self, key: bytes | None, caller: str | tuple[str, str, str], roles, subject: str | None = None,
              claims: tuple[str, str] | None = None, **extra) -> dict[str, str]:
        """``key`` None: the issuer trusted for the agency's jurisdiction signs. ``claims``: the (type,
        jurisdiction) the token claims instead of the agency's own."""
        agency_id, agency_type, jurisdiction = CALLERS[caller] if isinstance(caller, str) else caller
        if key is None:
            key = self._gt_key if jurisdiction == "GT" else self._key
            extra.setdefault("issuer", GT_ISSUER if jurisdiction == "GT" else DEV_ISSUER)
        if claims is not None:
            agency_type, jurisdiction = claims
        roles = sorted(str(r) for r in roles)
        token = mint(key, agency_id=agency_id, agency_type=agency_type, jurisdiction=jurisdiction, roles=roles,
                     subject=subject or f"{agency_id.lower()}-{'-'.join(roles)}", **extra)
        return {"authorization": f"Bearer {token}"}

    @staticmethod
    def agency_of(caller: str) -> str:
        return CALLERS[caller][0]

    def of(self, caller: str, *roles: Role | str, subject: str | None = None) -> dict[str, str]:
        return self._mint(None, caller, roles or (Role.CASEWORKER,), subject)

    def of_agency(self, agency: tuple[str, str, str], *roles: Role | str, subject: str | None = None) -> dict[str, str]:
        """A token of an agency the matrix does not probe: (agency id, agency type, jurisdiction)."""
        return self._mint(None, agency, roles or (Role.CASEWORKER,), subject)

    def for_permission(self, caller: str, permission: Permission | None, subject: str | None = None) -> dict[str, str]:
        """Every role that grants the route's permission: the strongest token the agency can hold for it."""
        return self.of(caller, *(GRANTS[permission] if permission else (Role.CASEWORKER,)), subject=subject)

    def claiming(self, caller: str, permission: Permission | None, agency_type: str,
                 jurisdiction: str) -> dict[str, str]:
        """A token of the caller's own agency, from its own issuer, that claims another type and jurisdiction,
        with every role that grants the permission."""
        roles = GRANTS[permission] if permission else (Role.CASEWORKER,)
        return self._mint(None, caller, roles, claims=(agency_type, jurisdiction))

    def expired(self, caller: str = "inm") -> dict[str, str]:
        return self._mint(None, caller, tuple(Role), ttl_s=60, now=1_700_000_000)

    def wrong_key(self, caller: str = "inm") -> dict[str, str]:
        return self._mint(self._foreign_key, caller, tuple(Role))

    def invalid(self) -> dict[str, dict[str, str]]:
        every_role = tuple(Role)
        return {"no token": {}, "expired token": self.expired(), "token signed with another key": self.wrong_key(),
                "token for another audience": self._mint(None, "inm", every_role, audience="other-system"),
                "token of another issuer": self._mint(self._key, "inm", every_role, issuer="someone-else"),
                "malformed token": {"authorization": "Bearer not.a.jwt"},
                # Agency identity is the directory's (enlace_platform.auth): each of these is validly signed.
                "token for an agency the directory does not know, claiming to coordinate MX":
                    self._mint(None, PHANTOM, every_role),
                "token for a known agency from the issuer trusted for another jurisdiction":
                    self._mint(self._gt_key, "inm", every_role, issuer=GT_ISSUER),
                "token for a known agency from an untrusted issuer with a key pair of its own":
                    self._mint(self._foreign_key, "gt", every_role, issuer="https://idp.rogue.example")}


# Personal data of the seeded persons, and free text that stays in its service.
MOTHER = {"given_names": "Xochiquetzal Amaranta", "family_names": "Quintanilla Sigilo", "sex": "female",
          "date_of_birth": "1990-04-12", "nationality": "HND", "languages": ["es"],
          "documents": [{"type": "passport", "number": "HNDSEC4471", "issuing_country": "HND"}]}
SON = {"given_names": "Teodomiro", "family_names": "Quintanilla Sigilo", "sex": "male", "estimated_age": 8,
       "languages": ["es"]}
PLACE = "Paso Reservado 17"
NOTE_TEXT = "Nota reservada: vive con su tía en la colonia Escondida"


@dataclass
class World:
    clients: dict[str, httpx.AsyncClient]
    apps: dict[str, object]
    tokens: Tokens
    receiver_url: str
    data_dir: Path
    ids: dict[str, str] = field(default_factory=dict)  # the seeded objects that belong to an agency
    directory: dict[str, str] = field(default_factory=dict)  # the public directory's: anyone may see them
    statuses: StatusLog = field(default_factory=StatusLog)  # every answer the services gave, by operation
    _serial: itertools.count = field(default_factory=lambda: itertools.count(1))

    def serial(self) -> str:
        return f"{next(self._serial):04d}{uuid.uuid4().hex[:4].upper()}"

    def client(self, service: str) -> httpx.AsyncClient:
        return self.clients[service]

    @property
    def secrets(self) -> list[str]:
        """Personal data and free text: never in an error, a list of someone else's, or a metric."""
        return [MOTHER["given_names"], MOTHER["family_names"], SON["given_names"],
                MOTHER["documents"][0]["number"], PLACE, NOTE_TEXT, "Amaranta", "Sigilo", self.seeded_webhook_url]

    @property
    def seeded_webhook_url(self) -> str:
        return f"{self.receiver_url}?seeded"

    @property
    def fields(self) -> list[str]:
        """Codes and values of the seeded objects that only their agencies may learn (metrics may carry codes)."""
        return ["INTERNATIONAL_PROTECTION", MOTHER["date_of_birth"]]

    # --- helpers the scenarios use to make fresh objects for probes that change or destroy them ---

    async def fresh_person(self) -> dict[str, str]:
        """A new single adult registered by MX-INM, for probes that order removal or erase."""
        r = await self.client("intake").post("/cases", headers=self.tokens.of("inm"), json={
            "place": "Ciudad Hidalgo", "encountered_at": "2026-11-28T09:00:00Z",
            "persons": [{"given_names": "Probe", "family_names": "Fresh", "sex": "male", "estimated_age": 30}]})
        assert r.status_code == 201, r.text
        return {"case_id": r.json()["id"], "person_id": r.json()["persons"][0]["id"]}

    async def fresh_consent(self) -> dict[str, str]:
        """A new consent of the son's (for the psychosocial service), for probes that withdraw it."""
        case_id, person_id = self.ids["case"], self.ids["son"]
        r = await self.client("intake").post(f"/cases/{case_id}/persons/{person_id}/consents",
                                             headers=self.tokens.of("inm"),
                                             json={"recipient_agency_type": "psychosocial", "purpose": "follow_up"})
        assert r.status_code in (200, 201), r.text
        return {"case_id": case_id, "person_id": person_id, "consent_id": r.json()["id"]}

    async def fresh_agency(self) -> dict[str, str]:
        agency_id = f"MX-SEC{uuid.uuid4().hex[:6].upper()}"
        r = await self.client("referral").post("/agencies", headers=self.tokens.of("coord", Role.COORDINATOR), json={
            "id": agency_id, "name": "Agencia de prueba", "type": "psychosocial", "jurisdiction": "MX"})
        assert r.status_code == 201, r.text
        return {"agency_id": agency_id}

    async def fresh_service(self) -> dict[str, str]:
        r = await self.client("referral").post("/services", headers=self.tokens.of("coord", Role.COORDINATOR),
                                               json=self.service_body(self.directory["agency"]))
        assert r.status_code == 201, r.text
        return {"service_id": r.json()["id"]}

    async def fresh_subscription(self) -> dict[str, str]:
        r = await self.client("notification").post("/subscriptions", headers=self.tokens.of("comar", Role.SUPERVISOR),
                                                   json=self.subscription_body())
        assert r.status_code == 201, r.text
        return {"subscription_id": r.json()["id"]}

    @staticmethod
    def probe_case() -> dict:
        """A case a probe registers: nothing in it is one of the seeded persons' data."""
        return {"place": "Punto de prueba", "encountered_at": "2026-11-28T08:00:00Z",
                "persons": [{"given_names": "Probe", "family_names": "Caller", "sex": "female", "estimated_age": 35}]}

    @staticmethod
    def service_body(agency_id: str) -> dict:
        return {"agency_id": agency_id, "area": "MX", "name": "Servicio de prueba", "need_codes": ["SGBV_SURVIVOR"],
                "languages": ["es"], "capacity": 0}

    def subscription_body(self) -> dict:
        # The receiver answers, so nothing retries; the URL differs from the seeded subscription's.
        return {"url": f"{self.receiver_url}?probe", "event_types": ["referral.requested.v1"]}


async def seed(world: World) -> None:
    """The seeded objects, each made by the agency that owns it, through the APIs and the events."""
    intake, referral, notification = world.clients["intake"], world.clients["referral"], world.clients["notification"]
    t, ids = world.tokens, world.ids

    r = await notification.post("/subscriptions", headers=t.of("comar", Role.SUPERVISOR), json={
        "url": world.seeded_webhook_url, "event_types": ["referral.*", "protection_hold.*"]})
    assert r.status_code == 201, r.text
    ids["subscription"] = r.json()["id"]

    r = await referral.post("/agencies", headers=t.of("coord", Role.COORDINATOR), json={
        "id": "MX-SECTEST", "name": "Agencia de pruebas de seguridad", "type": "psychosocial", "jurisdiction": "MX"})
    assert r.status_code == 201, r.text
    world.directory["agency"] = "MX-SECTEST"
    r = await referral.post("/services", headers=t.of("coord", Role.COORDINATOR),
                            json=World.service_body("MX-SECTEST"))
    assert r.status_code == 201, r.text
    world.directory["service"] = r.json()["id"]

    inm = t.of("inm", Role.CASEWORKER)
    r = await intake.post("/cases", headers=inm, json={
        "place": PLACE, "encountered_at": "2026-11-28T10:00:00Z", "persons": [MOTHER, SON],
        "relationships": [{"from_person": 0, "to_person": 1, "kind": "parent"}]})
    assert r.status_code == 201, r.text
    ids["case"] = r.json()["id"]
    ids["mother"], ids["son"] = (p["id"] for p in r.json()["persons"])
    mother = f"/cases/{ids['case']}/persons/{ids['mother']}"
    r = await intake.post(f"{mother}/consents", headers=inm,
                          json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    assert r.status_code == 201, r.text
    ids["consent"] = r.json()["id"]
    r = await intake.post(f"/cases/{ids['case']}/screenings", headers=inm, json={
        "person_id": ids["mother"], "fear_of_return": True, "wishes_to_seek_asylum": True})
    assert r.status_code == 201, r.text
    ids["screening"] = r.json()["id"]

    async def asylum_referral():  # read by the coordinator: the barrier withholds the need from MX-INM
        page = (await referral.get("/referrals", headers=t.of("coord", Role.COORDINATOR),
                                   params={"case_id": ids["case"], "direction": "jurisdiction"})).json()
        return [i for i in page["items"] if i["need_code"] == "INTERNATIONAL_PROTECTION"]
    # On a fresh broker the first consumer group join waits for __consumer_offsets: a generous liveness bound.
    (ref,) = await eventually(asylum_referral, timeout=120, what="the asylum referral")
    assert ref["to_agency_id"] == "MX-COMAR", ref
    ids["referral"] = ref["id"]

    async def the_hold():
        holds = (await referral.get("/holds", headers=inm, params={"case_id": ids["case"]})).json()
        return holds and holds[0]["id"]
    ids["hold"] = await eventually(the_hold, timeout=120, what="the protection hold")

    async def comar_may_read_the_mother():
        return (await intake.get(mother, headers=t.of("comar"))).status_code == 200
    await eventually(comar_may_read_the_mother, timeout=120, what="the addressee's access to the mother")

    # The addressee's note: MX-INM, the sender, is not shown an asylum referral at all (firewall.referral_shown).
    r = await referral.post(f"/referrals/{ids['referral']}/notes", headers=t.of("comar"), json={"text": NOTE_TEXT})
    assert r.status_code == 201, r.text

    comar_reader = t.of("comar", Role.CASEWORKER)

    async def delivered():
        page = (await notification.get("/deliveries", headers=comar_reader)).json()
        done = [d for d in page["items"] if d["status"] == "delivered" and d["event_type"] == "referral.requested.v1"]
        return done and done[0]["id"]
    ids["delivery"] = await eventually(delivered, timeout=120, what="the webhook delivery to MX-COMAR")
