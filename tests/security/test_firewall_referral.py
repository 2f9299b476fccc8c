"""The information barrier on the referral service's API, against the real stack (three services, real broker).

MX-INM (the migration authority) registers a woman and screens her; the screening refers her for four needs:
sexual violence (accepted, with notes), trafficking (rejected with a reason), asylum (completed with a
non-public outcome) and urgent medical care (completed with a public one). By hand it may not refer a
sensitive need at all (403, whatever exists). Every field of every answer
MX-INM gets is checked against firewall.TABLE, iterating the table; nothing of a sensitive referral's receiver,
need, notes or reasons may appear in any body it gets. The receivers and the coordinator still see it all.
"""

import json
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
    await act("MEDICAL_URGENT", medical, "complete", outcome_code="MEDICAL_CARE_PROVIDED")
    # INM's own words on a sensitive referral: it wrote them, so it reads them back.
    r = await referral.post(f"/referrals/{state.referrals['SGBV_SURVIVOR']}/notes", headers=inm,
                            json={"text": INM_NOTE})
    assert r.status_code == 201, r.text
    state.acted.append(r.json())
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
    for need, rid in barrier.referrals.items():
        _check_referral(items[rid], need)
        one = await referral.get(f"/referrals/{rid}", headers=inm)
        assert one.status_code == 200
        _check_referral(one.json(), need)
        assert one.json()["hold_active"] is (need in ("INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED"))
        bodies.append((f"GET /referrals/{need}", one.text))
        history = await referral.get(f"/referrals/{rid}/history", headers=inm)
        assert history.status_code == 200
        bodies.append((f"GET history {need}", history.text))
        for row in history.json():
            own = row["action"] == "note"
            assert row["action"] in firewall.ENFORCEMENT_HISTORY_ACTIONS or own, row
            _check_history_row(row, need, own)
        if need == "SGBV_SURVIVOR":
            assert [r["note"] for r in history.json() if r["action"] == "note"] == [INM_NOTE], "its own note stays"
    # Statuses and public outcomes are what it may learn.
    assert items[barrier.referrals["INTERNATIONAL_PROTECTION"]]["status"] == "completed"
    assert items[barrier.referrals["INTERNATIONAL_PROTECTION"]]["outcome_code"] is None
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
        _check_history_row(created_note, "SGBV_SURVIVOR", own=True)
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
    # Always visible: status, case, direction; these narrow by what each item shows anyway.
    completed = (await referral.get("/referrals", headers=inm, params={**case, "status": "completed"})).json()
    assert {i["id"] for i in completed["items"]} == {barrier.referrals["INTERNATIONAL_PROTECTION"],
                                                      barrier.referrals["MEDICAL_URGENT"]}
    sent = (await referral.get("/referrals", headers=inm, params={**case, "direction": "from"})).json()
    assert {i["id"] for i in sent["items"]} >= set(barrier.referrals.values())
    kpis = await referral.get("/kpis", headers=world.tokens.of("inm", Role.SUPERVISOR))
    assert kpis.status_code == 200 and set(kpis.json()) == {"scope", "total", "by_status",
                                                           "median_time_to_accept_s", "overdue", "closed_loop_share"}
    _assert_no_secret(barrier, kpis.text, "GET /kpis")


async def test_the_sender_cannot_cancel_a_protection_referral(world: World, barrier: Barrier):
    referral, inm = world.client("referral"), _inm(world)
    fresh = await world.fresh_person()
    person = f"/cases/{fresh['case_id']}/persons/{fresh['person_id']}"
    r = await world.client("intake").post(f"{person}/consents", headers=inm,
                                          json={"recipient_agency_type": "asylum_office", "purpose": "referral"})
    assert r.status_code == 201, r.text
    r = await world.client("intake").post(f"/cases/{fresh['case_id']}/screenings", headers=inm,
                                          json={"person_id": fresh["person_id"], "fear_of_return": True})
    assert r.status_code == 201, r.text

    async def opened():
        r = await referral.get("/referrals", headers=inm, params={"case_id": fresh["case_id"], "direction": "from"})
        items = r.json()["items"] if r.status_code == 200 else []
        return items[0] if len(items) == 1 and items[0]["hold_active"] else None
    asylum = await eventually(opened, timeout=120, what="a fresh asylum referral")
    assert asylum["hold_active"] is True and "cancel" not in asylum["allowed_actions"]
    r = await referral.post(f"/referrals/{asylum['id']}/actions", headers=inm,
                            json={"action": "cancel", "reason_code": "OTHER", "reason_text": "deportación"})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json", r.text
    assert (await referral.get(f"/referrals/{asylum['id']}", headers=inm)).json()["status"] == "requested"
    coordinator = world.tokens.of("coord", Role.COORDINATOR)
    assert "cancel" in (await referral.get(f"/referrals/{asylum['id']}", headers=coordinator)).json()[
        "allowed_actions"], "the coordinator still may"


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
