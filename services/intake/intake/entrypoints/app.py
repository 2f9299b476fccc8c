"""ASGI entry point: ``uvicorn --factory intake.entrypoints.app:create_app``."""

from fastapi import FastAPI

from enlace_platform.runtime import create_service_app
from intake.adapters.audit_scope import AUDIT_SCOPE
from intake.bootstrap import build_runtime
from intake.config import IntakeSettings
from intake.entrypoints.api import router


def create_app(settings: IntakeSettings | None = None) -> FastAPI:
    settings = settings or IntakeSettings()
    return create_service_app(
        title="Enlace intake",
        description="Registers encounters at the border and screens people for protection needs.",
        runtime=build_runtime(settings),
        audit_scope=AUDIT_SCOPE,
        routers=[router],
    )
