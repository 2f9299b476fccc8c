"""The state machine through the real use case and database: every status × every action × every
actor (receiver, sender, coordinator, unrelated agency), with the HTTP status each one gets."""

import itertools

from sqlalchemy import update

from enlace_platform.auth import Principal
from enlace_platform.problems import Problem
from referral.adapters.orm import ReferralRow, ServiceRow
from referral.domain.lifecycle import Action, Status
from referral.service_layer.referrals import Command, Policy, act
from tests.support.referral_support import referral_harness, referral_settings, screened
from tests.unit.referral.test_lifecycle import EXPECTED, WHO

ACTORS = {
    "receiver": Principal("u1", "MX-PFPNNA", "child_protection", "MX", ("caseworker",)),
    "sender": Principal("u2", "MX-INM", "migration_authority", "MX", ("caseworker",)),
    "coordinator": Principal("u3", "MX-COORD", "coordinator", "MX", ("coordinator",)),
    "unrelated": Principal("u4", "MX-COMAR", "asylum_office", "MX", ("caseworker",)),
}
COMPLETE_COMMAND = dict(reason_code="OTHER", reason_text="texto", outcome_code="CHILD_PLACED_IN_CARE",
                        to_service_id="MX-PFPNNA-1")


async def test_every_status_action_and_actor_through_the_use_case(tmp_path, dev_issuer_dir):
    async with referral_harness(referral_settings(tmp_path, dev_issuer_dir)) as ref:
        policy = Policy.from_settings(ref.runtime.settings)
        async with ref.runtime.sessions() as session:  # 360 open referrals must not fill the service up
            await session.exec(update(ServiceRow).where(ServiceRow.id == "MX-PFPNNA-1").values(capacity=1000))
            await session.commit()
        outcomes = {}
        for status, action, actor in itertools.product(list(Status), list(Action), ACTORS):
            event = screened("UNACCOMPANIED_CHILD", age_band="12-17")
            await ref.deliver(event)
            async with ref.runtime.sessions() as session:
                referral_id = (await session.exec(
                    ReferralRow.__table__.select().where(ReferralRow.case_id == event.data["case_id"]))).first().id
                await session.exec(update(ReferralRow).where(ReferralRow.id == referral_id).values(
                    status=status.value, open_key=None if status in {Status.REJECTED, Status.COMPLETED,
                                                                     Status.CANCELLED, Status.FAILED}
                    else f"{event.data['person_id']}|UNACCOMPANIED_CHILD"))
                await session.commit()
            async with ref.runtime.sessions() as session:
                try:
                    after = await act(session, policy, referral_id, ACTORS[actor], Command(action, **COMPLETE_COMMAND),
                                      keyring=ref.runtime.keyring)
                    await session.commit()
                    outcomes[(status.value, action.value, actor)] = (200, after.status)
                except Problem as problem:
                    outcomes[(status.value, action.value, actor)] = (problem.status, None)

    assert len(outcomes) == 9 * 10 * 4
    for (status, action, actor), got in outcomes.items():
        if actor == "unrelated":
            expected = (404, None)
        elif actor not in WHO[action]:
            expected = (403, None)
        elif (status, action) in EXPECTED:
            expected = (200, EXPECTED[(status, action)])
        else:
            expected = (409, None)
        assert got == expected, (status, action, actor)
