"""ASGI entry point: ``uvicorn --factory referral.entrypoints.app:create_app``."""

from fastapi import FastAPI

from enlace_platform.runtime import create_service_app
from referral.adapters.audit_scope import AUDIT_SCOPE
from referral.bootstrap import build_runtime
from referral.config import ReferralSettings
from referral.entrypoints.api import router
from referral.entrypoints.directory_api import router as directory_router


def create_app(settings: ReferralSettings | None = None) -> FastAPI:
    settings = settings or ReferralSettings()
    return create_service_app(
        title="Enlace referral",
        description="Routes protection needs to the responsible agency through the service directory and runs "
                    "the closed referral loop: lifecycle, deadline clocks and protection holds.",
        runtime=build_runtime(settings),
        audit_scope=AUDIT_SCOPE,
        routers=[router, directory_router],
    )
