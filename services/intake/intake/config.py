from datetime import timedelta

from pydantic import Field

from enlace_platform.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    database_url: str = Field("sqlite+aiosqlite:///./.run/intake.db", validation_alias="INTAKE_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8001", validation_alias="INTAKE_PUBLIC_BASE_URL")
    # Retention: a person is erased (RETENTION_EXPIRED) once their case has been inactive this long, unless a
    # protection hold (active or pending) or an open referral still needs them. ISO 8601 duration or seconds.
    retention_period: timedelta = Field(timedelta(days=1826), gt=timedelta(0), validation_alias="INTAKE_RETENTION_PERIOD")
    retention_purge_interval_s: float = Field(3600.0, gt=0, validation_alias="INTAKE_RETENTION_PURGE_INTERVAL_S")
