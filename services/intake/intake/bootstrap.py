"""Wires intake's runtime: its tables and the referral events it consumes."""

from pathlib import Path

from enlace_platform.agencies import follow_directory
from enlace_platform.runtime import ConsumerSpec, ServiceRuntime
from intake.adapters.orm import TABLES
from intake.config import IntakeSettings
from intake.domain import events
from intake.service_layer.handlers import HOLD_HANDLERS, REFERRAL_HANDLERS
from intake.service_layer.retention import retention_loop, seal_legacy_rows, search_index_rotation

MIGRATIONS = Path(__file__).parent / "adapters" / "migrations"  # Alembic: start-up migrates to head


def build_runtime(settings: IntakeSettings) -> ServiceRuntime:
    consumers = [
        # The removal safeguard: protection holds placed and released by the referral service.
        ConsumerSpec(name="intake.protection-holds", topics=[events.HOLD_TOPIC], handlers=HOLD_HANDLERS),
        # Referral status and outcome codes: receiving agencies' access grants and the case view.
        ConsumerSpec(name="intake.referrals", topics=[events.REFERRAL_TOPIC], handlers=REFERRAL_HANDLERS),
    ]
    runtime = ServiceRuntime(settings=settings, tables=TABLES, consumers=consumers, migrations=MIGRATIONS,
                             # Rows written in clear before migration 0003 are sealed here: the key-encryption
                             # key is the runtime's, out of the migration's reach.
                             on_startup=[seal_legacy_rows],
                             background=[retention_loop(settings.retention_purge_interval_s)],
                             key_rotation=[search_index_rotation(settings.service_name)])
    # A token's agency is what the directory says it is: intake keeps its own copy (enlace_platform.agencies).
    follow_directory(runtime, seed_path=settings.directory_seed_path, refresh_s=settings.agency_refresh_s)
    return runtime
