"""ASGI entry point: ``uvicorn --factory notification.entrypoints.app:create_app``."""

from fastapi import FastAPI

from enlace_platform.runtime import create_service_app
from notification.adapters.audit_scope import AUDIT_SCOPE
from notification.bootstrap import build_runtime
from notification.config import NotificationSettings
from notification.entrypoints.api import router


def create_app(settings: NotificationSettings | None = None) -> FastAPI:
    settings = settings or NotificationSettings()
    return create_service_app(
        title="Enlace notification",
        description="Tells agencies about referral events by signed webhooks and e-mail.",
        runtime=build_runtime(settings),
        audit_scope=AUDIT_SCOPE,
        routers=[router],
    )
