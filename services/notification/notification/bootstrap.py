"""Wires the notification runtime: tables, sealing of old signing secrets, the referral and hold events it
consumes, and the dispatcher."""

import logging
from pathlib import Path

from enlace_platform.agencies import AgencyRegistry, follow_directory
from enlace_platform.runtime import ConsumerSpec, ServiceRuntime
from notification.adapters.orm import TABLES
from notification.adapters.signing_secrets import KEY_ROTATION, seal_legacy_secrets
from notification.config import NotificationSettings
from notification.domain.events import TOPICS
from notification.service_layer.dispatcher import Dispatcher
from notification.service_layer.handlers import make_referral_event_handler
from notification.service_layer.metrics import delivery_gauges

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "adapters" / "migrations"  # Alembic: start-up migrates to head


def build_runtime(settings: NotificationSettings) -> ServiceRuntime:
    agencies = AgencyRegistry()  # the directory: whose subscriptions hear what, and every token's agency
    on_event = make_referral_event_handler(settings, agencies)
    if not settings.smtp_host:
        log.info("NOTIFICATION_SMTP_HOST is not set: e-mail is off (webhooks only)")

    async def dispatch_deliveries(runtime: ServiceRuntime) -> None:
        await Dispatcher(runtime, settings).run()

    runtime = ServiceRuntime(
        settings=settings,
        tables=TABLES,
        migrations=MIGRATIONS,
        consumers=[ConsumerSpec(name="notification.webhooks", topics=list(TOPICS),
                                handlers={t: on_event for types in TOPICS.values() for t in types})],
        background=[dispatch_deliveries],
        # Secrets written in clear before they were sealed: the key-encryption key is the runtime's, out of
        # a migration's reach. Runs before the dispatcher starts.
        on_startup=[seal_legacy_secrets],
        scrape_hooks=[delivery_gauges],
        key_rotation=[KEY_ROTATION],
        agencies=agencies,
    )
    # Whose subscriptions hear what, and a token's agency, are the directory's word (enlace_platform.agencies).
    follow_directory(runtime, seed_path=settings.directory_seed_path, refresh_s=settings.agency_refresh_s)
    return runtime
