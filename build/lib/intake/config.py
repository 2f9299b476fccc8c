from pydantic import Field

from enlace_platform.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    database_url: str = Field("sqlite+aiosqlite:///./.run/intake.db", validation_alias="INTAKE_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8001", validation_alias="INTAKE_PUBLIC_BASE_URL")
