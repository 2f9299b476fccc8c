"""Wires intake's runtime: its tables, the events it consumes and its background loops."""

from enlace_platform.runtime import ServiceRuntime
from intake.adapters.orm import TABLES
from intake.config import IntakeSettings


def build_runtime(settings: IntakeSettings) -> ServiceRuntime:
    # Intake consumes protection-hold events once the removal safeguard lands (intake issue).
    return ServiceRuntime(settings=settings, tables=TABLES, consumers=[])
