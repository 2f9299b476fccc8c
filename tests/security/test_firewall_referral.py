"""The information barrier on the referral service's API, against the real stack (three services, real broker).

MX-INM (the migration authority) registers a woman and screens her; the screening refers her for four needs:
sexual violence (accepted, with notes), trafficking (rejected with a reason), asylum (completed with a
non-public outcome) and urgent medical care (completed with a public one). By hand it may not refer a
sensitive need at all (403, whatever exists). The three sensitive referrals are not shown to MX-INM at all,
though it sent them: every route on one answers exactly as for an unknown id, no list holds one, and it learns
of them only through the person's protection holds. Every field of every answer it gets on the medical
referral is checked against firewall.TABLE, iterating the table; nothing of a sensitive referral's receiver,
need, notes or reasons may appear in any body it gets. The receivers and the coordinator still see it all.
"""

import json
import re
import uuid
from dataclasses import dataclass, field

import pytest

from enlace_platform import firewall
from enlace_platform.access import Role
from enlace_platform.firewall import TABLE, Rule
from tests.security.world import World
from tests.support.harness import eventually

INM_NOTE = "Nota de INM: la persona pidió hablar con alguien de confianza"
NEEDS = ("SGBV_SURVIVOR", "TRAFFICKING_PRESUMED", "INTERNATIONAL_PROTECTION", "MEDICAL_URGENT")
# Answers whose rules find exactly those four needs (rules v3): fear of return, one strong trafficking
# indicator, sexual violence not known to be recent, an urgent medical need.
SCREENING = {"fear_of_return": True, "trafficking_indicators": ["DEBT_BONDAGE"], "sexual_violence_disclosed": True,
             "urgent_medical_need": True}
CONSENTED_TYPES = ("asylum_office", "anti_trafficking", "health", "psychosocial")


@dataclass
class Barrier:
    case_id: str
    person_id: str
    referrals: dict[str, str] = field(default_factory=dict)  # need -> referral id
    receivers: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # need -> (agency, type, service)
    texts: dict[str, list[str]] = field(default_factory=dict)  # need -> free text only its receiver may read
    created: dict[str, dict] = field(default_factory=dict)  # need -> INM's first GET /referrals/{id} answer
    hidden: dict[str, tuple[int, str]] = field(default_factory=dict)  # need -> INM's first GET (status, body)
    acted: list[dict] = field(default_factory=list)  # INM's answers to its own actions


def _receiver(world: World, state: "Barrier", need: str, *roles) -> dict[str, str]:
    agency, agency_type, _ = state.receivers[need]
    return world.tokens.of_agency((agency, agency_type, "MX"), *(roles or (Role.CASEWORKER,)))


@pytest.fixture(scope="module")
async def barrier(world: World) -> Barrier:
    intake, referral, t = world.client("intake"), world.client("referral"), world.tokens
    inm = t.of("inm", Role.CASEWORKER)
    r = await intake.post("/cases", headers=inm, json={
        "place": "Paso Barrera", "encountered_at": "2026-11-28T11:00:00Z",
        "persons": [{"given_names": "Barrera", "family_names": "Prueba", "sex": "female", "estimated_age": 28,
                     "languages": ["es"]}]})
    assert r.status_code == 201, r.text
    state = Barrier(case_id=r.json()["id"], person_id=r.json()["persons"][0]["id"])
    person = f"/cases/{state.case_id}/persons/{state.person_id}"
    for agency_type in CONSENTED_TYPES:
        r = await intake.post(f"{person}/consents", headers=inm,
                              json={"recipient_agency_type": agency_type, "purpose": "referral"})
        assert r.status_code == 201, r.text

    r = await intake.post(f"/cases/{state.case_id}/screenings", headers=inm,
                          json={"person_id": state.person_id, **SCREENING})
    assert r.status_code == 201, r.text
    assert sorted(n["code"] for n in r.json()["needs"]) == sorted(NEEDS)
    coordinator = t.of("coord", Role.COORDINATOR)

    async def routed():
        r = await referral.get("/referrals", headers=coordinator,
                               params={"case_id": state.case_id, "direction": "jurisdiction"})
        items = {i["need_code"]: i for i in r.json()["items"]} if r.status_code == 200 else {}
        return items if set(NEEDS) <= set(items) and all(items[n]["to_agency_id"] for n in NEEDS) else None
    items = await eventually(routed, timeout=120, what="the screening's four routed referrals")
    if items["SGBV_SURVIVOR"]["to_agency_id"] == items["MEDICAL_URGENT"]["to_agency_id"]:
        # Health comes first for sexual violence; the coordinator hands it to the psychosocial service, so the
        # survivor's receiver is not also the (visible) receiver of the medical referral.
        r = await referral.post(f"/referrals/{items['SGBV_SURVIVOR']['id']}/actions", headers=coordinator,
                                json={"action": "reassign", "to_service_id": "MX-PSI-1"})
        assert r.status_code == 200, r.text
        items["SGBV_SURVIVOR"] = r.json()
    for need, item in items.items():
        state.referrals[need] = item["id"]
        state.receivers[need] = (item["to_agency_id"], item["to_agency_type"], item["to_service_id"])
        r = await referral.get(f"/referrals/{item['id']}", headers=inm)
        if need in firewall.SENSITIVE_NEEDS:
            state.hidden[need] = (r.status_code, r.text.replace(item["id"], "<id>"))
        else:
            assert r.status_code == 200, r.text
            state.created[need] = r.json()

    async def act(need, headers, action, **body):
        r = await referral.post(f"/referrals/{state.referrals[need]}/actions", headers=headers,
                                json={"action": action, **body})
        assert r.status_code == 200, r.text
        return r.json()

    async def note(need, headers, text):
        r = await referral.post(f"/referrals/{state.referrals[need]}/notes", headers=headers, json={"text": text})
        assert r.status_code == 201, r.text
        state.texts.setdefault(need, []).append(text)

    sgbv = _receiver(world, state, "SGBV_SURVIVOR")
    await act("SGBV_SURVIVOR", sgbv, "accept")
    await note("SGBV_SURVIVOR", sgbv, "Albergue Colibrí, calle Oculta 9: la persona está a salvo")
    trafficking = _receiver(world, state, "TRAFFICKING_PRESUMED")
    await act("TRAFFICKING_PRESUMED", trafficking, "reject", reason_code="OTHER",
              reason_text="Derivada a la red de casas seguras de la fiscalía")
    state.texts["TRAFFICKING_PRESUMED"] = ["Derivada a la red de casas seguras de la fiscalía"]
    asylum = _receiver(world, state, "INTERNATIONAL_PROTECTION")
    await act("INTERNATIONAL_PROTECTION", asylum, "accept")
    await note("INTERNATIONAL_PROTECTION", asylum, "Entrevista: teme a la pandilla que controla su barrio")
    await act("INTERNATIONAL_PROTECTION", asylum, "complete", outcome_code="ASYLUM_CLAIM_REGISTERED")
    medical = _receiver(world, state, "MEDICAL_URGENT")
    await act("MEDICAL_URGENT", medical, "accept")
    await note("MEDICAL_URGENT", medical, "Profilaxis iniciada en el centro de salud")
    # INM's own words on the referral it is shown: it wrote them, so it reads them back.
    r = await referral.post(f"/referrals/{state.referrals['MEDICAL_URGENT']}/notes", headers=inm,
                            json={"text": INM_NOTE})
    assert r.status_code == 201, r.text
    state.acted.append(r.json())
    await act("MEDICAL_URGENT", medical, "complete", outcome_code="MEDICAL_CARE_PROVIDED")
    return state


def _inm(world: World) -> dict[str, str]:
    return world.tokens.for_permission("inm", None)  # caseworker


def _forbidden_strings(state: Barrier, need: str) -> list[str]:
    """What a body for MX-INM must never contain about a sensitive referral."""
    agency, _, service = state.receivers[need]
    return [agency, service, need, *state.texts.get(need, [])]


def _check_referral(item: dict, need: str) -> None:
    """Every field of a referral as MX-INM gets it, by the table (iterated, not hand-picked)."""
    rules = TABLE["referral"]
    assert set(item) <= set(rules), f"fields without a rule: {set(item) - set(rules)}"
    assert set(rules) <= set(item) | {"hold_active"} and "hold_active" in item
    sensitive = need in firewall.SENSITIVE_NEEDS
    for name, rule in rules.items():
        value = item[name]
        if rule is Rule.ALWAYS:
            assert value is not None or name in ("closed_at",), (need, name)
        elif rule is Rule.NEVER or (rule is Rule.IF_NOT_SENSITIVE and sensitive):
            assert value is None, (need, name, value)
        elif rule is Rule.IF_PUBLIC_OUTCOME:
            assert value is None or value in firewall.PUBLIC_OUTCOMES, (need, name, value)
        elif rule is Rule.IF_NOT_SENSITIVE:
            assert value is not None or name in ("to_agency_id", "to_agency_type", "to_service_id", "accepted_at"), \
                (need, name)
        else:
            raise AssertionError(f"referral.{name}: rule {rule} not checked")


def _check_history_row(row: dict, need: str, own: bool) -> None:
    rules = TABLE["history"]
    assert set(row) == set(rules), set(row) ^ set(rules)
    sensitive = need in firewall.SENSITIVE_NEEDS
    for name, rule in rules.items():
        withheld = (rule is Rule.NEVER or (rule is Rule.IF_NOT_SENSITIVE and sensitive)
                    or (rule is Rule.IF_OWN and not own)
                    or (rule is Rule.IF_PUBLIC_OUTCOME and row[name] not in firewall.PUBLIC_OUTCOMES))
        if withheld:
            assert row[name] is None, (need, row["action"], name, row[name])


def _check_hold(hold: dict, need: str) -> None:
    rules = TABLE["hold"]
    assert set(hold) <= set(rules), set(hold) - set(rules)
    sensitive = need in firewall.SENSITIVE_NEEDS
    for name, rule in rules.items():
        if name not in hold:
            continue
        if rule is Rule.NEVER or (rule is Rule.IF_NOT_SENSITIVE and sensitive):
            assert hold[name] is None, (need, name, hold[name])
        elif rule is Rule.IF_PUBLIC_OUTCOME:
            assert hold[name] is None or hold[name] in firewall.PUBLIC_OUTCOMES


def _assert_no_secret(state: Barrier, body: str, where: str) -> None:
    for need in firewall.SENSITIVE_NEEDS & set(state.referrals):
        for secret in _forbidden_strings(state, need):
            assert secret not in body, f"{where}: {secret!r} reached the enforcement agency"


async def test_every_referral_answer_to_the_sender_follows_the_table(world: World, barrier: Barrier):
    referral, inm = world.client("referral"), _inm(world)
    bodies: list[tuple[str, str]] = []
    for need, created in barrier.created.items():
        _check_referral(created, need)
        bodies.append((f"GET /referrals/{{id}} {need}", json.dumps(created)))
    page = await referral.get("/referrals", headers=inm, params={"case_id": barrier.case_id, "limit": 200})
    assert page.status_code == 200
    items = {i["id"]: i for i in page.json()["items"]}
    bodies.append(("GET /referrals", page.text))
    assert set(items) == {barrier.referrals["MEDICAL_URGENT"]}, "no referral of a sensitive need is listed"
    assert page.json()["total"] == 1
    for need, rid in barrier.referrals.items():
        if need in firewall.SENSITIVE_NEEDS:
            continue  # not shown at all: test_a_sensitive_referral_is_answered_as_an_unknown_id
        _check_referral(items[rid], need)
        one = await referral.get(f"/referrals/{rid}", headers=inm)
        assert one.status_code == 200
        _check_referral(one.json(), need)
        assert one.json()["hold_active"] is False
        bodies.append((f"GET /referrals/{need}", one.text))
        history = await referral.get(f"/referrals/{rid}/history", headers=inm)
        assert history.status_code == 200
        bodies.append((f"GET history {need}", history.text))
        for row in history.json():
            own = row["action"] == "note"
            assert row["action"] in firewall.ENFORCEMENT_HISTORY_ACTIONS or own, row
            _check_history_row(row, need, own)
        assert [r["note"] for r in history.json() if r["action"] == "note"] == [INM_NOTE], \
            "its own note stays; the receiver's is not even a row"
    # Statuses and public outcomes are what it may learn.
    assert items[barrier.referrals["MEDICAL_URGENT"]]["outcome_code"] == "MEDICAL_CARE_PROVIDED"
    assert items[barrier.referrals["MEDICAL_URGENT"]]["to_agency_id"] == "MX-SSA"
    holds = await referral.get("/holds", headers=inm, params={"case_id": barrier.case_id})
    assert holds.status_code == 200 and len(holds.json()) == 2
    for hold in holds.json():
        need = next(n for n, rid in barrier.referrals.items() if rid == hold["referral_id"])
        _check_hold(hold, need)
        assert hold["active"] is True
    bodies.append(("GET /holds", holds.text))
    for created_note in barrier.acted:
        _check_history_row(created_note, "MEDICAL_URGENT", own=True)
        assert created_note["note"] == INM_NOTE
    for where, body in bodies:
        _assert_no_secret(barrier, body, where)


async def test_filters_on_withheld_fields_are_no_oracle(world: World, barrier: Barrier):
    referral, inm = world.client("referral"), _inm(world)
    case = {"case_id": barrier.case_id, "limit": 200}
    for need in sorted(firewall.SENSITIVE_NEEDS):
        page = (await referral.get("/referrals", headers=inm, params={**case, "need_code": need})).json()
        assert page["items"] == [] and page["total"] == 0, need
    medical = (await referral.get("/referrals", headers=inm, params={**case, "need_code": "MEDICAL_URGENT"})).json()
    assert [i["id"] for i in medical["items"]] == [barrier.referrals["MEDICAL_URGENT"]]
    for overdue in ("true", "false"):
        page = (await referral.get("/referrals", headers=inm, params={**case, "overdue": overdue})).json()
        assert page["items"] == [], "the deadline is withheld: no referral it only sent matches"
    # Always visible: status, case, direction; these narrow by what each item shows anyway, and never bring
    # back a referral it is not shown.
    completed = (await referral.get("/referrals", headers=inm, params={**case, "status": "completed"})).json()
    assert {i["id"] for i in completed["items"]} == {barrier.referrals["MEDICAL_URGENT"]}
    sensitive_ids = {barrier.referrals[n] for n in firewall.SENSITIVE_NEEDS & set(barrier.referrals)}
    for direction in ("from", "to", None):
        params = {**case, **({"direction": direction} if direction else {})}
        sent = (await referral.get("/referrals", headers=inm, params=params)).json()
        assert not {i["id"] for i in sent["items"]} & sensitive_ids, direction
    sent = (await referral.get("/referrals", headers=inm, params={**case, "direction": "from"})).json()
    assert {i["id"] for i in sent["items"]} == {barrier.referrals["MEDICAL_URGENT"]}
    kpis = await referral.get("/kpis", headers=world.tokens.of("inm", Role.SUPERVISOR))
    assert kpis.status_code == 200 and set(kpis.json()) == {"scope", "total", "by_status",
                                                           "median_time_to_accept_s", "overdue", "closed_loop_share"}
    _assert_no_secret(barrier, kpis.text, "GET /kpis")
    # The KPIs count what the list shows it, not one referral more (a sensitive one would be an oracle).
    listed = (await referral.get("/referrals", headers=inm, params={"limit": 1})).json()["total"]
    assert kpis.json()["total"] == listed == sum(kpis.json()["by_status"].values())


def _as_unknown(body: str, referral_id: str) -> str:
    return body.replace(referral_id, "<id>")


async def test_a_sensitive_referral_is_answered_as_an_unknown_id(world: World, barrier: Barrier):
    """MX-INM sent the three sensitive referrals, yet every route on one answers exactly as for an id that does
    not exist: the same 404 and the same body (the id aside)."""
    referral, inm = world.client("referral"), _inm(world)
    unknown = str(uuid.uuid4())
    routes = (("GET", "", None), ("GET", "/history", None), ("POST", "/notes", {"text": "¿sigue abierta?"}),
              ("POST", "/actions", {"action": "cancel", "reason_code": "OTHER"}),
              ("POST", "/actions", {"action": "accept"}))

    async def answer(rid: str, method: str, suffix: str, body: dict | None) -> tuple[int, str, str]:
        r = await referral.request(method, f"/referrals/{rid}{suffix}", headers=inm, json=body)
        return r.status_code, r.headers.get("content-type", ""), _as_unknown(r.text, rid)

    for method, suffix, body in routes:
        expected = await answer(unknown, method, suffix, body)
        assert expected[0] == 404 and expected[1] == "application/problem+json", expected
        for need in sorted(firewall.SENSITIVE_NEEDS & set(barrier.referrals)):
            assert await answer(barrier.referrals[need], method, suffix, body) == expected, (need, method, suffix)
    first_unknown = await referral.get(f"/referrals/{unknown}", headers=inm)
    for need, (status, body) in barrier.hidden.items():
        assert (status, body) == (404, _as_unknown(first_unknown.text, unknown)), need
    # Nothing it did above changed them: the receivers and the coordinator see them as before.
    coordinator = world.tokens.of("coord", Role.COORDINATOR)
    for need in firewall.SENSITIVE_NEEDS & set(barrier.referrals):
        one = (await referral.get(f"/referrals/{barrier.referrals[need]}", headers=coordinator)).json()
        assert one["status"] != "cancelled" and "¿sigue abierta?" not in json.dumps(one), need


async def test_the_sender_cannot_cancel_an_asylum_referral_it_learns_of_only_by_its_hold(world: World,
                                                                                            barrier: Barrier):
    referral, inm = world.client("referral"), _inm(world)
    fresh = await world.fresh_person()
    person = f"/cases/{fresh['case_id']}/persons/{fresh['person_id']}"
    r = await world.client("intake").post(f"{person}/consents", headers=inm,
                                          json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    assert r.status_code == 201, r.text
    r = await world.client("intake").post(f"/cases/{fresh['case_id']}/screenings", headers=inm,
                                          json={"person_id": fresh["person_id"], "fear_of_return": True})
    assert r.status_code == 201, r.text

    async def held():
        r = await referral.get("/holds", headers=inm, params={"case_id": fresh["case_id"]})
        holds = r.json() if r.status_code == 200 else []
        return holds[0] if len(holds) == 1 and holds[0]["active"] else None
    hold = await eventually(held, timeout=120, what="the hold of a fresh asylum referral")
    assert hold["need_code"] is None and hold["to_agency_id"] is None
    r = await referral.get("/referrals", headers=inm, params={"case_id": fresh["case_id"]})
    assert r.json()["items"] == [] and r.json()["total"] == 0, "the referral itself is not shown"
    unknown = str(uuid.uuid4())
    cancel = {"action": "cancel", "reason_code": "OTHER", "reason_text": "deportación"}
    r = await referral.post(f"/referrals/{hold['referral_id']}/actions", headers=inm, json=cancel)
    nothing = await referral.post(f"/referrals/{unknown}/actions", headers=inm, json=cancel)
    assert r.status_code == nothing.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert _as_unknown(r.text, hold["referral_id"]) == _as_unknown(nothing.text, unknown)
    coordinator = world.tokens.of("coord", Role.COORDINATOR)
    asylum = (await referral.get(f"/referrals/{hold['referral_id']}", headers=coordinator)).json()
    assert asylum["status"] == "requested" and "cancel" in asylum["allowed_actions"], "the coordinator still may"


async def test_the_receivers_and_the_coordinator_still_see_everything(world: World, barrier: Barrier):
    referral = world.client("referral")
    coordinator = world.tokens.of("coord", Role.COORDINATOR)
    for need, rid in barrier.referrals.items():
        for headers in (_receiver(world, barrier, need), coordinator):
            one = (await referral.get(f"/referrals/{rid}", headers=headers)).json()
            assert one["need_code"] == need and one["to_agency_id"] == barrier.receivers[need][0]
            assert one["routing"] is not None and one["version"] is not None and one["overdue"] is not None
            history = (await referral.get(f"/referrals/{rid}/history", headers=headers)).json()
            assert [h["seq"] for h in history] == list(range(1, len(history) + 1))
            written = {h["note"] for h in history} | {h["reason_text"] for h in history}
            assert set(barrier.texts.get(need, [])) <= written, need
    holds = (await referral.get("/holds", headers=coordinator, params={"case_id": barrier.case_id})).json()
    assert {h["need_code"] for h in holds} == {"INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED"}


async def test_a_sensitive_need_by_hand_is_refused_alike_whether_or_not_one_is_open(world: World, barrier: Barrier):
    """A 409 for an open referral would tell the migration authority that a sensitive need is in hand: the
    refusal comes from the request alone, so every sensitive need gets the same 403, open or not."""
    referral, inm = world.client("referral"), _inm(world)
    answers = []
    for need in sorted(firewall.SENSITIVE_NEEDS):  # SGBV open, asylum completed, crime victim never referred
        r = await referral.post("/referrals", headers=inm, json={
            "case_id": barrier.case_id, "person_id": barrier.person_id, "need_code": need, "age_band": "18-59"})
        assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json", r.text
        answers.append(r.json()["detail"].replace(need, "<need>"))
    assert len(set(answers)) == 1, answers


async def test_service_load_is_no_signal_to_the_enforcement_side(world: World, barrier: Barrier):
    """A service's open-referral count moving as a survivor is referred would name her receiver."""
    referral = world.client("referral")
    for headers, shown in ((_inm(world), False), (world.tokens.of("coord", Role.COORDINATOR), True)):
        services = (await referral.get("/services", headers=headers, params={"jurisdiction": "MX"})).json()
        assert services and all((s["open_referrals"] is not None) is shown for s in services), services
        one = (await referral.get(f"/services/{barrier.receivers['SGBV_SURVIVOR'][2]}", headers=headers)).json()
        assert (one["open_referrals"] is not None) is shown, one


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def _shape(body: str) -> str:
    """An answer with its ids and times blanked: what is left is what the answer tells."""
    return _TIME.sub("<time>", _UUID.sub("<id>", body))


async def test_re_screening_is_no_oracle(world: World):
    """Screening never opens a second referral for a need already open: were MX-INM shown its own sensitive
    referrals, the absence of a new one would tell it another agency refers the person for sexual violence.
    It screens two women alike, one whom the coordinator already referred by hand: its views are the same."""
    intake, referral, t = world.client("intake"), world.client("referral"), world.tokens
    inm, coordinator = t.of("inm", Role.CASEWORKER), t.of("coord", Role.COORDINATOR)
    views = []
    for referred_elsewhere in (True, False):
        r = await intake.post("/cases", headers=inm, json={
            "place": "Paso Oráculo", "encountered_at": "2026-11-29T10:00:00Z",
            "persons": [{"given_names": "Oráculo", "family_names": "Prueba", "sex": "female", "estimated_age": 31,
                         "languages": ["es"]}]})
        assert r.status_code == 201, r.text
        case_id, person_id = r.json()["id"], r.json()["persons"][0]["id"]
        for agency_type in ("health", "psychosocial"):
            r = await intake.post(f"/cases/{case_id}/persons/{person_id}/consents", headers=inm,
                                  json={"recipient_agency_type": agency_type, "purpose": "referral"})
            assert r.status_code == 201, r.text
        if referred_elsewhere:
            async def by_hand():
                r = await referral.post("/referrals", headers=coordinator, json={
                    "case_id": case_id, "person_id": person_id, "need_code": "SGBV_SURVIVOR", "age_band": "18-59"})
                return r if r.status_code == 201 else None  # once referral has learnt the case
            await eventually(by_hand, timeout=120, what="the coordinator's referral by hand")
        r = await intake.post(f"/cases/{case_id}/screenings", headers=inm, json={
            "person_id": person_id, "sexual_violence_disclosed": True, "urgent_medical_need": True})
        assert r.status_code == 201, r.text

        async def screened():  # the medical referral opens in the screening's one transaction
            r = await referral.get("/referrals", headers=coordinator,
                                   params={"case_id": case_id, "direction": "jurisdiction"})
            needs = sorted(i["need_code"] for i in r.json()["items"]) if r.status_code == 200 else []
            return needs if needs == ["MEDICAL_URGENT", "SGBV_SURVIVOR"] else None
        await eventually(screened, timeout=120, what="the screening routed")
        mine = await referral.get("/referrals", headers=inm, params={"case_id": case_id})
        case = await intake.get(f"/cases/{case_id}", headers=inm)
        holds = await referral.get("/holds", headers=inm, params={"case_id": case_id})
        assert mine.status_code == case.status_code == holds.status_code == 200
        assert [i["to_agency_type"] for i in mine.json()["items"]] == ["health"], mine.text
        views.append((_shape(mine.text), _shape(case.text), _shape(holds.text)))
    assert views[0] == views[1], "what MX-INM sees tells whether another agency refers her"
