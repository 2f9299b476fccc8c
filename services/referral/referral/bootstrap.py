"""Wires the referral runtime: tables, directory seeding, the events it consumes and its clock loop."""

from pathlib import Path

from enlace_platform.runtime import ConsumerSpec, ServiceRuntime
from enlace_platform.topics import INTAKE_CASE
from referral.adapters.directory import seed_if_empty
from referral.adapters.orm import TABLES
from referral.config import ReferralSettings
from referral.service_layer.clocks import clock_loop
from referral.service_layer.handlers import consumer_handlers
from referral.service_layer.metrics import referral_gauges
from referral.service_layer.referrals import Policy

MIGRATIONS = Path(__file__).parent / "adapters" / "migrations"  # Alembic: start-up migrates to head


def build_runtime(settings: ReferralSettings) -> ServiceRuntime:
    async def seed_directory(runtime: ServiceRuntime) -> None:
        if settings.directory_seed_path:
            async with runtime.sessions() as session:
                await seed_if_empty(session, Path(settings.directory_seed_path))

    runtime = ServiceRuntime(
        settings=settings,
        tables=TABLES,
        migrations=MIGRATIONS,
        consumers=[ConsumerSpec(name="referral.routing", topics=[INTAKE_CASE],
                                handlers=consumer_handlers(Policy.from_settings(settings)))],
        background=[clock_loop(settings.clock_interval_s)],
        on_startup=[seed_directory],
        scrape_hooks=[referral_gauges],
    )
    return runtime
