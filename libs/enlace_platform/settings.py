"""Settings shared by every service, read from ENLACE_* environment variables.

Each service subclasses :class:`ServiceSettings` and adds its own fields with its own
prefix (for example ``INTAKE_DATABASE_URL``).
"""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrustedIssuer(BaseModel):
    """An identity provider that may speak for an agency, and where its signing keys are found: a JWKS URL
    (production) or a PEM public key file (the development issuer)."""
    issuer: str = Field(min_length=1, description="The tokens' iss")
    jwks_url: str | None = None
    public_key_path: str | None = None

    @model_validator(mode="after")
    def _one_key_source(self):
        if (self.jwks_url is None) == (self.public_key_path is None):
            raise ValueError("an issuer needs exactly one key source: jwks_url or public_key_path")
        return self


ANY_AGENCY = "*"  # the key of auth_trusted_issuers that stands for every agency and jurisdiction


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENLACE_", populate_by_name=True, extra="ignore")

    service_name: str = "enlace"
    database_url: str = "sqlite+aiosqlite:///./.run/enlace.db"
    public_base_url: str = "http://127.0.0.1:8000"

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    # Prepended to every topic and consumer group; tests use it to isolate themselves.
    kafka_topic_prefix: str = ""
    kafka_start_timeout_s: float = 30.0
    # The broker's security (a cluster: SASL_SSL with SCRAM-SHA-512 and the cluster's CA; docs/operations.md).
    # kafka_client_options() turns them into every Enlace Kafka client's options.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: str | None = Field(None, description="Read when the clients are made (at start), so "
                                                                   "a rotated password needs only a restart")
    kafka_ssl_cafile: str | None = Field(None, description="CA certificates (PEM) the broker's certificate must "
                                                          "chain to; default: the system's")

    outbox_batch_size: int = 200
    outbox_fallback_poll_s: float = Field(2.0, description="Safety net; commits wake the relay at once")
    outbox_retry_base_s: float = 0.5
    outbox_retry_max_s: float = Field(10.0, description="Longest wait between attempts of a failing row: once the "
                                                        "broker is back, the backlog starts within it")
    outbox_send_timeout_s: float = Field(5.0, description="The producer's request_timeout_ms, and how long the "
                                                          "relay waits for acks; an event not acked by then counts "
                                                          "a failed attempt and stays with the producer, never "
                                                          "sent twice")
    outbox_lease_s: float = Field(60.0, description="How long a relay holds the rows it claimed; a crashed relay's "
                                                    "rows are claimed again after it. Must exceed the send timeout")

    consumer_max_attempts: int = Field(3, description="Tries of a handler that raises an unexpected error (a bug) "
                                                      "before its record is dead-lettered")
    consumer_retry_base_s: float = 0.2
    consumer_batch_size: int = Field(100, description="Most records a poll returns; a partition's share of them "
                                                      "is handled in one transaction")
    # A transient fault (database locked, full or down; broker gone; a timeout) pauses the partition and
    # retries its records after a capped, jittered, doubling delay, for as long as the fault lasts.
    consumer_fault_retry_base_s: float = 0.5
    consumer_fault_retry_max_s: float = 30.0
    # Each broker wait of a consumer is bounded, so shutdown is too (within shutdown_consumers_s).
    consumer_commit_timeout_s: float = Field(1.5, description="The last offset commit, on shutdown; offsets not "
                                                              "committed are redelivered, and the inbox skips them")
    consumer_close_timeout_s: float = Field(1.5, description="Leaving the consumer group on shutdown")
    consumer_dlq_timeout_s: float = Field(5.0, description="The dead-letter topic's ack; without it the record "
                                                           "is held and sent again later, never skipped")

    # Graceful shutdown (SIGTERM) in bounded steps, whatever the broker does; what a step leaves undone is
    # redone later (offsets not committed are redelivered, outbox rows not sent go at the next start).
    # Together with uvicorn's --timeout-graceful-shutdown (deploy/services.sh) a service ends within 20 s.
    shutdown_consumers_s: float = Field(4.0, description="Consumers finish the record in hand; loops end")
    shutdown_relay_drain_s: float = Field(3.0, description="The outbox relay publishes what is left")
    shutdown_producer_s: float = Field(2.0, description="The producer flushes and closes")

    # One span per SQL statement: several per request, so only when looking into the database's part.
    trace_sql: bool = False

    # Auth: production sets auth_jwks_url; local runs use the development issuer's key file.
    auth_jwks_url: str | None = None
    auth_issuer: str = "enlace-dev-issuer"
    auth_audience: str = "enlace"
    auth_dev_public_key_path: str = "./.run/dev-issuer/public.pem"
    auth_jwks_cache_s: float = Field(300.0, description="How long a fetched JWKS is used; a key the IdP "
                                                        "removed verifies at most this long")
    auth_jwks_refetch_interval_s: float = Field(10.0, description="Least time between JWKS fetches for an "
                                                                  "unknown kid or after a failed fetch")
    # Which issuer may speak for which agency (enlace_platform.auth): agency id, else the agency's jurisdiction
    # code, else "*" -> issuer. JSON in ENLACE_AUTH_TRUSTED_ISSUERS, e.g. {"MX": {"issuer": "https://idp.gob.mx",
    # "jwks_url": "https://idp.gob.mx/jwks"}}. Empty: auth_issuer, with auth_jwks_url or else the development
    # key file, is trusted for every agency (local runs).
    auth_trusted_issuers: dict[str, TrustedIssuer] = Field(default_factory=dict)

    # The directory's seed file (the referral service's agencies), read at a service's first start so that its
    # copy of the directory is never empty (enlace_platform.agencies); the referral service has its own setting.
    directory_seed_path: str | None = "deploy/demo/agencies.json"
    agency_refresh_s: float = Field(5.0, gt=0, description="How often each replica reloads its copy of the "
                                                           "directory: the longest a change takes to reach it")

    # Key-encryption key for the per-person data keys (enlace_platform.crypto): base64 of 32 bytes from the
    # secret store in production; local runs create a key file beside the database on first use.
    data_key: SecretStr | None = None
    data_key_file: str | None = Field(None, description="Default: ./.run/<service>-data.key")

    log_json: bool = True
    log_access: bool = Field(False, description="One line per request: method, route template, status, duration "
                                                "(never the query string; uvicorn's own access log stays off)")

    # Entry-point limits (enlace_platform.limits). Rates in the `limits` notation, moving windows that must all
    # hold, e.g. "600/second;3000/10 seconds": bursts of 600 in a second, 300 a second sustained; empty: none.
    # Counted per process: with N replicas a caller gets up to N times as much.
    max_request_body_bytes: int = Field(1_048_576, gt=0, description="Larger bodies are refused with 413 unread")
    rate_limit_per_agency: str = Field("600/second;3000/10 seconds",
                                       description="Requests of one agency whose token verified")
    rate_limit_per_address: str = Field("50/second;1000/minute",
                                        description="Requests from one client address that no verified token "
                                                    "speaks for (no token, a refused one, public paths)")

    def trusted_issuers(self) -> dict[str, TrustedIssuer]:
        if self.auth_trusted_issuers:
            return dict(self.auth_trusted_issuers)
        source = {"jwks_url": self.auth_jwks_url} if self.auth_jwks_url else \
            {"public_key_path": self.auth_dev_public_key_path}
        return {ANY_AGENCY: TrustedIssuer(issuer=self.auth_issuer, **source)}

    def kafka_sasl_secret(self) -> str | None:
        """The SASL password: the setting, else the file's content without surrounding blanks (read now)."""
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        if self.kafka_sasl_password_file:
            return Path(self.kafka_sasl_password_file).read_text(encoding="utf-8").strip()
        return None

    def kafka_client_options(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client Enlace makes (producer, consumers, admin, enlace-ops):
        security protocol, SASL credentials and the TLS context. Empty on a plaintext broker."""
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": protocol}
        if protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context  # only TLS clients pay for the import
            options["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        if protocol.startswith("SASL_"):
            password = self.kafka_sasl_secret()
            if not self.kafka_sasl_username or password is None:
                raise ValueError(f"{protocol} needs ENLACE_KAFKA_SASL_USERNAME and ENLACE_KAFKA_SASL_PASSWORD "
                                 "or ENLACE_KAFKA_SASL_PASSWORD_FILE")
            options.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                           sasl_plain_password=password)
        return options

    def topic(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"

    def key_encryption_key(self) -> bytes:
        from enlace_platform.crypto import load_key_encryption_key
        inline = self.data_key.get_secret_value() if self.data_key else None
        return load_key_encryption_key(inline, self.data_key_file or f"./.run/{self.service_name}-data.key")

    def group(self, name: str) -> str:
        return f"{self.kafka_topic_prefix}{name}"
