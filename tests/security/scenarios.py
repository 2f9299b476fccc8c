"""Per route: the path parameters to use, a body, and what each caller must get.

Expectations: an HTTP status (for a list: whether it shows the seeded objects is not checked), SEES
(200, and the response shows some of the seeded objects) or BLIND (200, and it shows none of them and
none of their personal data). ``params`` maps each path parameter to a seeded object (a key of
World.ids, or directory:<key> of World.directory), or is a World method that makes a fresh object, for
probes that change or destroy it. Every caller holds every role that grants the route's permission (roles
without it are probed separately); callers that must succeed are probed last.
"""

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.security.world import CALLERS, World

SEES, BLIND = "sees", "blind"


def expect(default, **per_caller) -> dict[str, int | str]:
    unknown = set(per_caller) - set(CALLERS)
    assert not unknown, f"no such callers: {unknown}"
    return {caller: per_caller.get(caller, default) for caller in CALLERS}


@dataclass(frozen=True)
class Scenario:
    expect: dict[str, int | str]
    params: dict[str, str] | Callable = field(default_factory=dict)
    body: dict | Callable[[World], dict] | None = None
    query: Callable[[World], dict] | None = None


CASE = {"case_id": "case"}
MOTHER = {"case_id": "case", "person_id": "mother"}
SON = {"case_id": "case", "person_id": "son"}
REFERRAL = {"referral_id": "referral"}
SUBSCRIPTION = {"subscription_id": "subscription"}
DELIVERY = {"delivery_id": "delivery"}
AGENCY = {"agency_id": "directory:agency"}
SERVICE = {"service_id": "directory:service"}
OF_THE_CASE = lambda w: {"case_id": w.ids["case"]}  # noqa: E731
# Needs with no protection hold, none of them the mother's screening's (INTERNATIONAL_PROTECTION).
# Not sensitive: an enforcement caller is refused a sensitive need by hand whatever the case (403, from the
# request alone), which would hide the 404 or 201 the matrix probes; tests/security/test_firewall_referral.py
# covers that refusal.
MANUAL_NEEDS = itertools.cycle(["MEDICAL_URGENT", "DISABILITY", "STRANDED_ASSISTED_RETURN", "STATELESSNESS_RISK"])

SCENARIOS: dict[tuple[str, str, str], Scenario] = {
    # --- intake: a case belongs to MX-INM; MX-COMAR may read the mother while its referral is open, and ---
    # --- nothing else of the case (docs/intake.md) ----------------------------------------------------
    ("intake", "POST", "/cases"): Scenario(expect(201), body=World.probe_case()),
    ("intake", "POST", "/cases/search"): Scenario(expect(BLIND, inm=SEES), body={"name": "Quintanilla"}),
    ("intake", "GET", "/cases"): Scenario(expect(BLIND, inm=SEES)),
    ("intake", "GET", "/cases/{case_id}"): Scenario(expect(404, inm=200), CASE),
    ("intake", "GET", "/cases/{case_id}/persons/{person_id}"): Scenario(expect(404, inm=200, comar=200), MOTHER),
    ("intake", "PATCH", "/cases/{case_id}/persons/{person_id}"): Scenario(expect(404, inm=200), MOTHER,
                                                                          body={"languages": ["es"]}),
    ("intake", "GET", "/cases/{case_id}/persons/{person_id}/history"): Scenario(expect(404, inm=200), MOTHER),
    ("intake", "POST", "/cases/{case_id}/screenings"): Scenario(
        expect(404, inm=201), CASE,
        body=lambda w: {"person_id": w.ids["son"], "fear_of_return": False,
                        "travelling_with_parent_or_guardian": True}),
    ("intake", "GET", "/cases/{case_id}/screenings"): Scenario(expect(404, inm=200), CASE),
    ("intake", "POST", "/cases/{case_id}/persons/{person_id}/consents"): Scenario(
        expect(404, inm=201), SON, body={"recipient_agency_type": "health", "purpose": "referral"}),
    # A person withdraws consent through the registering agency or the jurisdiction's coordinator (follow_up here:
    # the migration authority may withdraw it, as it cancels no protection referral).
    ("intake", "GET", "/cases/{case_id}/persons/{person_id}/consents"): Scenario(expect(404, inm=200, coord=200),
                                                                                MOTHER),
    ("intake", "POST", "/cases/{case_id}/persons/{person_id}/consents/{consent_id}/withdrawal"): Scenario(
        expect(404, inm=200, coord=200), World.fresh_consent),
    ("intake", "POST", "/cases/{case_id}/persons/{person_id}/removal-orders"): Scenario(
        expect(404, inm=201), World.fresh_person, body={"destination_country": "HND"}),
    ("intake", "POST", "/cases/{case_id}/persons/{person_id}/erasure"): Scenario(
        expect(404, inm=200), World.fresh_person, body={"reason_code": "ERASURE_REQUEST"}),
    ("intake", "GET", "/audit"): Scenario(expect(200)),

    # --- referral: MX-INM sent the referral to MX-COMAR; MX-COORD coordinates MX -----------------------
    # MX-INM sent the asylum referral, yet is not shown it (a sensitive need): its list of the case holds at most
    # the manual referrals it opens below, so whether it shows a seeded object depends on the order of probes.
    ("referral", "GET", "/referrals"): Scenario(expect(BLIND, inm=200, comar=SEES, coord=200), query=OF_THE_CASE),
    # A manual referral: the case's registering agency and its jurisdiction's coordinator (the addressee has not
    # accepted); each call asks for another need, so both succeed.
    ("referral", "POST", "/referrals"): Scenario(
        expect(404, inm=201, coord=201),
        body=lambda w: {"case_id": w.ids["case"], "person_id": w.ids["mother"], "need_code": next(MANUAL_NEEDS),
                        "age_band": "18-59", "languages": ["es"]}),
    # MX-INM, the enforcement sender, gets 404 on every route of it, as for an unknown id (a sensitive need).
    ("referral", "GET", "/referrals/{referral_id}"): Scenario(expect(404, comar=200, coord=200), REFERRAL),
    # Only the addressee receives: the coordinator sees the referral, so it gets 403.
    ("referral", "POST", "/referrals/{referral_id}/actions"): Scenario(
        expect(404, coord=403, comar=200), REFERRAL, body={"action": "receive"}),
    ("referral", "GET", "/referrals/{referral_id}/history"): Scenario(expect(404, comar=200, coord=200),
                                                                      REFERRAL),
    ("referral", "POST", "/referrals/{referral_id}/notes"): Scenario(expect(404, comar=201, coord=201),
                                                                     REFERRAL, body={"text": "Nota de prueba"}),
    ("referral", "GET", "/holds"): Scenario(expect(BLIND, inm=SEES, comar=SEES, coord=SEES), query=OF_THE_CASE),
    # The asylum referral is still open, so its coordinator may not release the hold yet.
    ("referral", "POST", "/holds/{hold_id}/release"): Scenario(expect(404, coord=409), {"hold_id": "hold"}),
    ("referral", "GET", "/kpis"): Scenario(expect(200)),
    # The directory: any agency reads it; only the coordinator of MX changes MX's part.
    ("referral", "GET", "/agencies"): Scenario(expect(200)),
    ("referral", "GET", "/agencies/{agency_id}"): Scenario(expect(200), AGENCY),
    ("referral", "POST", "/agencies"): Scenario(
        expect(403, coord=201),
        body=lambda w: {"id": f"MX-P{w.serial()}", "name": "Otra", "type": "health", "jurisdiction": "MX"}),
    ("referral", "PATCH", "/agencies/{agency_id}"): Scenario(expect(403, coord=200), AGENCY,
                                                             body={"name": "Agencia renombrada"}),
    ("referral", "DELETE", "/agencies/{agency_id}"): Scenario(expect(403, coord=204), World.fresh_agency),
    ("referral", "GET", "/services"): Scenario(expect(200)),
    ("referral", "GET", "/services/{service_id}"): Scenario(expect(200), SERVICE),
    ("referral", "POST", "/services"): Scenario(expect(403, coord=201),
                                                body=lambda w: World.service_body(w.directory["agency"])),
    ("referral", "PUT", "/services/{service_id}"): Scenario(
        expect(403, coord=200), SERVICE,
        body=lambda w: {k: v for k, v in World.service_body("").items() if k not in ("agency_id", "area")}),
    ("referral", "DELETE", "/services/{service_id}"): Scenario(expect(403, coord=204), World.fresh_service),
    ("referral", "GET", "/audit"): Scenario(expect(200)),

    # --- notification: MX-COMAR owns its subscription and the deliveries made for it ------------------
    ("notification", "POST", "/subscriptions"): Scenario(expect(201), body=World.subscription_body),
    ("notification", "GET", "/subscriptions"): Scenario(expect(BLIND, comar=SEES)),
    ("notification", "GET", "/subscriptions/{subscription_id}"): Scenario(expect(404, comar=200), SUBSCRIPTION),
    ("notification", "PATCH", "/subscriptions/{subscription_id}"): Scenario(
        expect(404, comar=200), SUBSCRIPTION, body={"event_types": ["referral.*", "protection_hold.*"]}),
    ("notification", "DELETE", "/subscriptions/{subscription_id}"): Scenario(expect(404, comar=204),
                                                                             World.fresh_subscription),
    ("notification", "POST", "/subscriptions/{subscription_id}/secret/rotation"): Scenario(expect(404, comar=200),
                                                                                         SUBSCRIPTION),
    ("notification", "GET", "/subscriptions/{subscription_id}/deliveries"): Scenario(expect(404, comar=200),
                                                                                   SUBSCRIPTION),
    ("notification", "GET", "/deliveries"): Scenario(expect(BLIND, comar=SEES)),
    ("notification", "GET", "/deliveries/{delivery_id}"): Scenario(expect(404, comar=200), DELIVERY),
    ("notification", "POST", "/deliveries/{delivery_id}/redelivery"): Scenario(expect(404, comar=202), DELIVERY),
    ("notification", "GET", "/audit"): Scenario(expect(200)),
}


def succeeds(expected: int | str) -> bool:
    return expected in (SEES, BLIND) or (isinstance(expected, int) and expected < 300)


def owner_of(scenario: Scenario) -> str:
    """The caller the route is for: the first that succeeds, else the first that sees the object at all."""
    for caller, expected in scenario.expect.items():
        if succeeds(expected):
            return caller
    return next(c for c, e in scenario.expect.items() if e != 404)
