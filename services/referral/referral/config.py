from datetime import timedelta

from pydantic import BaseModel, Field

from enlace_platform.settings import ServiceSettings
from referral.domain.clocks import NeedClocks


class NeedDeadlines(BaseModel):
    """Due times of one need, as ISO 8601 durations (``PT24H``) or seconds."""
    accept_within: timedelta
    complete_within: timedelta | None = None

    def clocks(self) -> NeedClocks:
        return NeedClocks(self.accept_within, self.complete_within)


_H = timedelta(hours=1)
_D = timedelta(days=1)

# Unaccompanied child: child protection notified and taking charge within 24 h (MX Ley de Migración
# art. 112). Sexual violence: medical care inside the 72 h post-exposure prophylaxis window.
DEFAULT_DEADLINES: dict[str, NeedDeadlines] = {
    "UNACCOMPANIED_CHILD": NeedDeadlines(accept_within=24 * _H, complete_within=30 * _D),
    "SEPARATED_CHILD": NeedDeadlines(accept_within=24 * _H, complete_within=30 * _D),
    "SGBV_SURVIVOR": NeedDeadlines(accept_within=24 * _H, complete_within=72 * _H),
    "MEDICAL_URGENT": NeedDeadlines(accept_within=12 * _H, complete_within=72 * _H),
    "TRAFFICKING_PRESUMED": NeedDeadlines(accept_within=48 * _H, complete_within=30 * _D),
    "INTERNATIONAL_PROTECTION": NeedDeadlines(accept_within=72 * _H, complete_within=90 * _D),
}


class ReferralSettings(ServiceSettings):
    service_name: str = "referral"
    database_url: str = Field("sqlite+aiosqlite:///./.run/referral.db", validation_alias="REFERRAL_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8002", validation_alias="REFERRAL_PUBLIC_BASE_URL")
    directory_seed_path: str | None = Field("deploy/demo/agencies.json", validation_alias="REFERRAL_DIRECTORY_SEED_PATH")

    # Per-need due times (JSON in REFERRAL_DEADLINES overrides the whole map); other needs use the default.
    deadlines: dict[str, NeedDeadlines] = Field(default_factory=lambda: dict(DEFAULT_DEADLINES),
                                                validation_alias="REFERRAL_DEADLINES")
    default_deadlines: NeedDeadlines = Field(NeedDeadlines(accept_within=7 * _D, complete_within=90 * _D),
                                             validation_alias="REFERRAL_DEFAULT_DEADLINES")
    # Council of Europe Convention art. 13: at least 30 days of recovery and reflection, no removal.
    reflection_period: timedelta = Field(30 * _D, validation_alias="REFERRAL_REFLECTION_PERIOD")
    clock_interval_s: float = Field(30.0, validation_alias="REFERRAL_CLOCK_INTERVAL_S")

    def clock_policy(self) -> tuple[dict[str, NeedClocks], NeedClocks]:
        return {code: d.clocks() for code, d in self.deadlines.items()}, self.default_deadlines.clocks()
