"""Settings shared by every service, read from ENLACE_* environment variables.

Each service subclasses :class:`ServiceSettings` and adds its own fields with its own
prefix (for example ``INTAKE_DATABASE_URL``).
"""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENLACE_", populate_by_name=True, extra="ignore")

    service_name: str = "enlace"
    database_url: str = "sqlite+aiosqlite:///./.run/enlace.db"
    public_base_url: str = "http://127.0.0.1:8000"

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic and consumer group; tests use it to isolate themselves.
    kafka_topic_prefix: str = ""
    kafka_start_timeout_s: float = 30.0

    outbox_batch_size: int = 200
    outbox_fallback_poll_s: float = Field(2.0, description="Safety net; commits wake the relay at once")
    outbox_retry_base_s: float = 0.5
    outbox_retry_max_s: float = 30.0

    consumer_max_attempts: int = 3
    consumer_retry_base_s: float = 0.2

    # Auth: production sets auth_jwks_url; local runs use the development issuer's key file.
    auth_jwks_url: str | None = None
    auth_issuer: str = "enlace-dev-issuer"
    auth_audience: str = "enlace"
    auth_dev_public_key_path: str = "./.run/dev-issuer/public.pem"
    auth_jwks_cache_s: float = Field(300.0, description="How long a fetched JWKS is used; a key the IdP "
                                                        "removed verifies at most this long")
    auth_jwks_refetch_interval_s: float = Field(10.0, description="Least time between JWKS fetches for an "
                                                                  "unknown kid or after a failed fetch")

    # Key-encryption key for the per-person data keys (enlace_platform.crypto): base64 of 32 bytes from the
    # secret store in production; local runs create a key file beside the database on first use.
    data_key: SecretStr | None = None
    data_key_file: str | None = Field(None, description="Default: ./.run/<service>-data.key")

    log_json: bool = True

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"

    def key_encryption_key(self) -> bytes:
        from enlace_platform.crypto import load_key_encryption_key
        inline = self.data_key.get_secret_value() if self.data_key else None
        return load_key_encryption_key(inline, self.data_key_file or f"./.run/{self.service_name}-data.key")

    def group(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"
