from pydantic import Field

from enlace_platform.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    service_name: str = "notification"
    database_url: str = Field("sqlite+aiosqlite:///./.run/notification.db",
                              validation_alias="NOTIFICATION_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8003", validation_alias="NOTIFICATION_PUBLIC_BASE_URL")
    referral_api_url: str = Field("http://127.0.0.1:8002", validation_alias="NOTIFICATION_REFERRAL_API_URL",
                                  description="Base of the links in webhook payloads")
    webhook_timeout_s: float = Field(10.0, validation_alias="NOTIFICATION_WEBHOOK_TIMEOUT_S")
    webhook_max_attempts: int = Field(8, validation_alias="NOTIFICATION_WEBHOOK_MAX_ATTEMPTS")
    webhook_retry_base_s: float = Field(2.0, validation_alias="NOTIFICATION_WEBHOOK_RETRY_BASE_S")
    webhook_retry_max_s: float = Field(600.0, validation_alias="NOTIFICATION_WEBHOOK_RETRY_MAX_S")
    dispatcher_fallback_poll_s: float = Field(1.0, validation_alias="NOTIFICATION_DISPATCHER_POLL_S")
