from pydantic import Field

from enlace_platform.settings import ServiceSettings


class ReferralSettings(ServiceSettings):
    service_name: str = "referral"
    database_url: str = Field("sqlite+aiosqlite:///./.run/referral.db", validation_alias="REFERRAL_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8002", validation_alias="REFERRAL_PUBLIC_BASE_URL")
    directory_seed_path: str | None = Field("deploy/demo/agencies.json", validation_alias="REFERRAL_DIRECTORY_SEED_PATH")
