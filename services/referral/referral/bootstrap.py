"""Wires the referral runtime: tables, directory seeding, sealing of old free text, the events it consumes
and its clock loop."""

from pathlib import Path

from enlace_platform.runtime import ConsumerSpec, ServiceRuntime, every
from enlace_platform.topics import INTAKE_CASE
from referral.adapters.directory import load_agencies, publish_directory_once, seed_if_empty
from referral.adapters.orm import TABLES
from referral.config import ReferralSettings
from referral.service_layer.clocks import clock_loop
from referral.service_layer.handlers import consumer_handlers
from referral.service_layer.metrics import referral_gauges
from referral.service_layer.referrals import Policy
from referral.service_layer.sealing import seal_legacy_text

MIGRATIONS = Path(__file__).parent / "adapters" / "migrations"  # Alembic: start-up migrates to head


def build_runtime(settings: ReferralSettings) -> ServiceRuntime:
    async def load_directory(runtime: ServiceRuntime) -> None:
        async with runtime.read_sessions() as session:
            runtime.agencies.replace(await load_agencies(session))

    async def seed_directory(runtime: ServiceRuntime) -> None:
        async with runtime.sessions() as session:
            if settings.directory_seed_path:
                await seed_if_empty(session, Path(settings.directory_seed_path))
            await publish_directory_once(session)  # the other services' copies start from it
        await load_directory(runtime)  # before the API serves: a token's agency is the directory's

    runtime = ServiceRuntime(
        settings=settings,
        tables=TABLES,
        migrations=MIGRATIONS,
        # The directory API updates this replica's registry at once; the others reload it (enlace_platform.agencies).
        background=[clock_loop(settings.clock_interval_s),
                    every(settings.agency_refresh_s, load_directory, name="directory-refresh")],
        # Free text written in clear before migration 0003 is sealed here: the key-encryption key is the
        # runtime's, out of the migration's reach.
        on_startup=[seed_directory, seal_legacy_text],
        scrape_hooks=[referral_gauges],
    )
    # The erasure handler reaches the runtime's keyring and engine (the keyring is loaded on first use).
    runtime.consumers.append(ConsumerSpec(name="referral.routing", topics=[INTAKE_CASE],
                                          handlers=consumer_handlers(Policy.from_settings(settings), runtime)))
    return runtime
