"""Agency identity across the three services, on the real broker: the referral service's directory decides who an
agency is, and intake and notification follow it (agency.changed.v1 on referral.agency) without a restart.

The coordinator adds an agency: soon a token for it works at intake and notification too. It marks the agency as
enforcement: notification treats it so. It removes the agency: its tokens are refused everywhere. Tokens claim
whatever they like about type and jurisdiction; it changes nothing."""

import pytest

from intake.config import IntakeSettings
from intake.entrypoints.app import create_app as intake_app
from notification.config import NotificationSettings
from notification.entrypoints.app import create_app as notification_app
from referral.config import ReferralSettings
from referral.entrypoints.app import create_app as referral_app
from tests.support.database_support import on_both_databases
from tests.support.harness import bearer, eventually, fast_settings, provision_topics, running_app, unique_prefix

pytestmark = [pytest.mark.kafka, on_both_databases]

NEW = {"id": "MX-REFUGIO", "name": "Albergue de pruebas", "type": "psychosocial", "jurisdiction": "MX"}
# Each service's route that any caseworker or supervisor of a known agency may call.
PROBES = {"intake": "/cases", "referral": "/referrals", "notification": "/subscriptions"}


async def test_a_directory_change_reaches_every_services_token_check(kafka_bootstrap, dev_issuer_dir, tmp_path,
                                                                    databases):
    prefix = unique_prefix()
    await provision_topics(kafka_bootstrap, prefix)
    common = dict(tmp_path=tmp_path, bootstrap=kafka_bootstrap, prefix=prefix, dev_issuer_dir=dev_issuer_dir,
                  agency_refresh_s=0.5, databases=databases)
    coord = bearer(dev_issuer_dir, "MX-COORD", "coordinator", roles=["coordinator"])
    # A token for the new agency that claims to be Mexico's coordinator: the directory says otherwise.
    newcomer = bearer(dev_issuer_dir, NEW["id"], "coordinator", "MX", roles=["caseworker", "supervisor"])

    apps = {"intake": intake_app(fast_settings(IntakeSettings, **common)),
            "referral": referral_app(fast_settings(ReferralSettings, **common)),
            "notification": notification_app(fast_settings(NotificationSettings, **common))}
    runtimes = {name: app.state.runtime for name, app in apps.items()}
    async with running_app(apps["intake"]) as intake, running_app(apps["referral"]) as referral, \
            running_app(apps["notification"]) as notification:
        clients = {"intake": intake, "referral": referral, "notification": notification}

        async def statuses() -> dict[str, int]:
            return {name: (await client.get(PROBES[name], headers=newcomer)).status_code
                    for name, client in clients.items()}

        assert set((await statuses()).values()) == {401}, "unknown to the directory: refused everywhere"

        r = await referral.post("/agencies", headers=coord, json=NEW)
        assert r.status_code == 201, r.text
        assert r.json()["enforcement"] is False

        async def accepted_everywhere():
            return set((await statuses()).values()) == {200}
        await eventually(accepted_everywhere, what="the new agency's token accepted by every service")
        for runtime in runtimes.values():
            known = runtime.agencies.get(NEW["id"])
            assert (known.type, known.jurisdiction, known.coordinator) == ("psychosocial", "MX", False)
        # Its claim to coordinate Mexico, with the coordinator role, changes nothing: the directory's type rules.
        claimed = bearer(dev_issuer_dir, NEW["id"], "coordinator", "MX", roles=["coordinator"])
        assert (await referral.post("/agencies", headers=claimed, json={
            "id": "MX-OTRA", "name": "x", "type": "health", "jurisdiction": "MX"})).status_code == 403

        r = await referral.patch(f"/agencies/{NEW['id']}", headers=coord, json={"enforcement": True})
        assert r.status_code == 200 and r.json()["enforcement"] is True, r.text

        async def marked_everywhere():
            return all(rt.agencies.get(NEW["id"]).enforcement for rt in runtimes.values())
        await eventually(marked_everywhere, what="the enforcement mark in every service")

        r = await referral.delete(f"/agencies/{NEW['id']}", headers=coord)
        assert r.status_code == 204, r.text

        async def refused_everywhere():
            return set((await statuses()).values()) == {401}
        await eventually(refused_everywhere, what="the removed agency's token refused by every service")
        problem = await intake.get("/cases", headers=newcomer)
        assert problem.headers["content-type"].startswith("application/problem+json")
        assert problem.json()["status"] == 401
