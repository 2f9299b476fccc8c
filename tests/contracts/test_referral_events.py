"""Every event type the referral service publishes, as its real code writes it to the outbox,
validates against contracts/events/<type>.schema.json and carries no free text.

No broker: screenings are handed to the consumer handlers, agencies act through the HTTP API, and
the clocks run one pass at a chosen time.
"""

import json
from datetime import timedelta

import pytest
from jsonschema import Draft202012Validator

from referral.domain import events
from referral.service_layer.clocks import run_clocks
from referral.service_layer.referrals import now_utc
from tests.contracts.test_schemas import FORMATS
from tests.support.referral_support import (
    consent_changed, consent_scope, referral_harness, referral_settings, screened, token,
)
from tests.support.harness import REPO

EVENTS = REPO / "contracts" / "events"
FREE_TEXT = ["Sin cupo hoy", "No contesta", "Entrevista realizada", "Duplicado por error", "Caso mal remitido"]


@pytest.fixture
async def produced(tmp_path, dev_issuer_dir):
    auth = lambda agency: token(dev_issuer_dir, agency)  # noqa: E731
    async with referral_harness(referral_settings(tmp_path, dev_issuer_dir)) as ref:
        coord = auth("MX-COORD")
        await ref.deliver(screened("UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION", "TRAFFICKING_PRESUMED",
                                   age_band="12-17"))
        # From the outbox: the sender, an enforcement agency, no longer sees the needs (the firewall).
        sent = {p["need_code"]: {**p, "id": p["referral_id"]} for _, p in await ref.events("referral.requested.v1")}
        child, asylum, trafficking = (sent[c] for c in ("UNACCOMPANIED_CHILD", "INTERNATIONAL_PROTECTION",
                                                        "TRAFFICKING_PRESUMED"))
        pfpnna, comar = auth("MX-PFPNNA"), auth("MX-COMAR")
        steps = [
            (child, pfpnna, {"action": "receive"}), (child, pfpnna, {"action": "accept"}),
            (child, pfpnna, {"action": "start"}), (child, pfpnna, {"action": "hold"}),
            (child, pfpnna, {"action": "resume"}),
            (child, pfpnna, {"action": "complete", "outcome_code": "CHILD_PLACED_IN_CARE"}),
            (asylum, comar, {"action": "reject", "reason_code": "NO_CAPACITY", "reason_text": FREE_TEXT[0]}),
            (trafficking, coord, {"action": "cancel", "reason_code": "REFERRED_IN_ERROR", "reason_text": FREE_TEXT[4]}),
        ]
        for referral, headers, body in steps:
            r = await ref.client.post(f"/referrals/{referral['id']}/actions", headers=headers, json=body)
            assert r.status_code == 200, r.text
        r = await ref.client.post(f"/referrals/{child['id']}/notes", headers=pfpnna, json={"text": FREE_TEXT[2]})
        assert r.status_code == 201
        # The asylum need was rejected by the only asylum office: it waits in the queue; the coordinator
        # assigns it back, and this time the office accepts and then fails.
        [queued] = await ref.referrals(coord, direction="queue")
        for headers, body in [(coord, {"action": "reassign", "to_service_id": "MX-COMAR-1"}),
                              (comar, {"action": "accept"}),
                              (comar, {"action": "fail", "reason_code": "PERSON_NOT_REACHABLE",
                                       "reason_text": FREE_TEXT[1]})]:
            r = await ref.client.post(f"/referrals/{queued['id']}/actions", headers=headers, json=body)
            assert r.status_code == 200, r.text
        # Consent missing, and a deadline missed; then the reflection period ends.
        await ref.deliver(screened("MEDICAL_URGENT", scope=consent_scope()))
        await ref.deliver(screened("SGBV_SURVIVOR", age_band="18-59"))
        # A consent withdrawn: the system cancels what was sent under it.
        medical = screened("MEDICAL_URGENT", scope=consent_scope("health"))
        await ref.deliver(medical)
        await ref.deliver(consent_changed(medical.data["case_id"], medical.data["person_id"], "health",
                                          status="withdrawn"))
        assert await run_clocks(ref.runtime.sessions, now_utc() + timedelta(days=31)) > 0
        yield await ref.events()


def test_every_published_type_has_a_schema_named_after_it():
    for event_type in events.PUBLISHED:
        schema = json.loads((EVENTS / f"{event_type}.schema.json").read_text())
        assert schema["title"] == event_type
        Draft202012Validator.check_schema(schema)


async def test_the_payloads_the_code_writes_validate(produced):
    seen = {t for t, _ in produced}
    assert seen == set(events.PUBLISHED), f"not exercised: {set(events.PUBLISHED) - seen}"
    for event_type, payload in produced:
        validator = Draft202012Validator(json.loads((EVENTS / f"{event_type}.schema.json").read_text()),
                                         format_checker=FORMATS)
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(payload)]
        assert errors == [], (event_type, payload)


async def test_events_carry_codes_and_ids_only(produced):
    text = json.dumps([p for _, p in produced], ensure_ascii=False)
    for secret in FREE_TEXT:
        assert secret not in text


async def test_the_shared_shape_holds_for_every_referral_event(produced):
    referral_events = [(t, p) for t, p in produced if t in events.REFERRAL_EVENT_TYPES]
    shape = set(referral_events[0][1])
    # Only a reassignment adds one field: the agency that held the referral before.
    assert all(set(p) - {"previous_to_agency_id"} == shape for _, p in referral_events)
    assert all(("previous_to_agency_id" in p) == (t == events.REFERRAL_REASSIGNED) for t, p in referral_events)
    for event_type, payload in referral_events:
        assert (payload["to_agency_id"] is None) == (payload["to_agency_type"] is None) == (
            payload["to_service_id"] is None)
        if event_type == events.REFERRAL_COMPLETED:
            assert payload["outcome_code"]
        if event_type in (events.REFERRAL_REJECTED, events.REFERRAL_CANCELLED, events.REFERRAL_FAILED,
                          events.REFERRAL_ESCALATED, events.REFERRAL_OVERDUE):
            assert payload["reason_code"]
    by_system = [p for t, p in referral_events if t == events.REFERRAL_CANCELLED and p["actor_agency_id"] is None]
    assert [p["reason_code"] for p in by_system] == ["CONSENT_WITHDRAWN"]
    reasons = {p["reason_code"] for t, p in referral_events if t == events.REFERRAL_ESCALATED}
    assert reasons == {"REJECTED_NO_ALTERNATIVE", "CONSENT_MISSING", "OVERDUE"}
    released = [p for t, p in produced if t == events.HOLD_RELEASED]
    assert sorted(p["release_reason"] for p in released) == ["COMPLETED_FINAL", "REFLECTION_PERIOD_ENDED"]
