from pydantic import Field

from enlace_platform.settings import ServiceSettings


class NotificationSettings(ServiceSettings):
    service_name: str = "notification"
    database_url: str = Field("sqlite+aiosqlite:///./.run/notification.db",
                              validation_alias="NOTIFICATION_DATABASE_URL")
    public_base_url: str = Field("http://127.0.0.1:8003", validation_alias="NOTIFICATION_PUBLIC_BASE_URL")
    referral_api_url: str = Field("http://127.0.0.1:8002", validation_alias="NOTIFICATION_REFERRAL_API_URL",
                                  description="Base of the links in webhook payloads and e-mails")

    webhook_timeout_s: float = Field(10.0, validation_alias="NOTIFICATION_WEBHOOK_TIMEOUT_S",
                                     description="Per request; a receiver slower than this counts as a failure")
    webhook_allow_loopback: bool = Field(False, validation_alias="NOTIFICATION_WEBHOOK_ALLOW_LOOPBACK",
                                         description="Development only (make up sets it): webhooks may go to "
                                                     "loopback addresses (never private networks)")
    secret_rotation_overlap_s: float = Field(86400.0, validation_alias="NOTIFICATION_SECRET_ROTATION_OVERLAP_S",
                                             description="How long the old secret still signs after a rotation")

    # Retries (webhooks and e-mails alike).
    delivery_max_attempts: int = Field(100, validation_alias="NOTIFICATION_DELIVERY_MAX_ATTEMPTS")
    delivery_max_age_s: float = Field(86400.0, validation_alias="NOTIFICATION_DELIVERY_MAX_AGE_S",
                                      description="After this long without success a delivery is dead")
    delivery_retry_base_s: float = Field(5.0, validation_alias="NOTIFICATION_DELIVERY_RETRY_BASE_S")
    delivery_retry_max_s: float = Field(900.0, validation_alias="NOTIFICATION_DELIVERY_RETRY_MAX_S")

    # Dispatch.
    delivery_concurrency_per_endpoint: int = Field(
        8, ge=1, validation_alias="NOTIFICATION_CONCURRENCY_PER_ENDPOINT",
        description="Attempts in flight per webhook URL (and for SMTP); 2 while its last attempt failed")
    delivery_concurrency_total: int = Field(64, ge=1, validation_alias="NOTIFICATION_CONCURRENCY_TOTAL")
    delivery_lease_margin_s: float = Field(30.0, validation_alias="NOTIFICATION_LEASE_MARGIN_S",
                                           description="A claimed attempt's lease is its timeout plus this")
    dispatcher_fallback_poll_s: float = Field(1.0, validation_alias="NOTIFICATION_DISPATCHER_POLL_S",
                                              description="Safety net; new deliveries wake the dispatcher at once")

    # E-mail over SMTP; off while smtp_host is unset.
    smtp_host: str | None = Field(None, validation_alias="NOTIFICATION_SMTP_HOST")
    smtp_port: int = Field(25, validation_alias="NOTIFICATION_SMTP_PORT")
    smtp_sender: str = Field("enlace-notifications@localhost", validation_alias="NOTIFICATION_SMTP_SENDER")
    smtp_username: str | None = Field(None, validation_alias="NOTIFICATION_SMTP_USERNAME")
    smtp_password: str | None = Field(None, validation_alias="NOTIFICATION_SMTP_PASSWORD")
    smtp_starttls: bool = Field(False, validation_alias="NOTIFICATION_SMTP_STARTTLS")
    smtp_timeout_s: float = Field(10.0, validation_alias="NOTIFICATION_SMTP_TIMEOUT_S")
