"""Wires the referral runtime: tables, directory seeding, and the events it consumes."""

from pathlib import Path

from enlace_platform.runtime import ConsumerSpec, ServiceRuntime
from enlace_platform.topics import INTAKE_CASE
from referral.adapters.directory import seed_if_empty
from referral.adapters.orm import TABLES
from referral.config import ReferralSettings
from referral.domain import events
from referral.service_layer.handlers import on_case_screened


def build_runtime(settings: ReferralSettings) -> ServiceRuntime:
    async def seed_directory(runtime: ServiceRuntime) -> None:
        if settings.directory_seed_path:
            async with runtime.sessions() as session:
                await seed_if_empty(session, Path(settings.directory_seed_path))

    return ServiceRuntime(
        settings=settings,
        tables=TABLES,
        consumers=[ConsumerSpec(name="referral.routing", topics=[INTAKE_CASE],
                                handlers={events.CASE_SCREENED: on_case_screened})],
        on_startup=[seed_directory],
    )
