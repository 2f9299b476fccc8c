"""Wires the notification runtime: tables, the referral events it consumes, and the dispatcher."""

from enlace_platform.runtime import ConsumerSpec, ServiceRuntime
from enlace_platform.topics import REFERRAL_REFERRAL
from notification.adapters.orm import TABLES
from notification.config import NotificationSettings
from notification.domain.events import WEBHOOK_EVENT_TYPES
from notification.service_layer.dispatcher import Dispatcher
from notification.service_layer.handlers import make_referral_event_handler


def build_runtime(settings: NotificationSettings) -> ServiceRuntime:
    on_referral_event = make_referral_event_handler(settings)

    async def dispatch_webhooks(runtime: ServiceRuntime) -> None:
        await Dispatcher(runtime, settings).run()

    return ServiceRuntime(
        settings=settings,
        tables=TABLES,
        consumers=[ConsumerSpec(name="notification.webhooks", topics=[REFERRAL_REFERRAL],
                                handlers={t: on_referral_event for t in WEBHOOK_EVENT_TYPES})],
        background=[dispatch_webhooks],
    )
