"""The one config object: every environment variable the service reads is mapped here."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_SQLITE_URL = f"sqlite:///{PROJECT_ROOT / 'var' / 'dispatch.sqlite3'}"
# Public (it is in this file): tokens signed with it can be forged by anyone, so only a
# development machine may run on it.
DEV_SECRET_KEY = "dev-only-secret-key-change-me"
MIN_SECRET_KEY_LENGTH = 16


class InsecureSecretKey(RuntimeError):
    """SECRET_KEY is unset, the public default or too short, outside development.

    Not a ValueError on purpose: pydantic would wrap that in a ValidationError whose text
    repeats the input values, database and Redis URLs (and their passwords) included."""

    def __init__(self) -> None:
        super().__init__(
            "SECRET_KEY must be set to a real secret (at least "
            f"{MIN_SECRET_KEY_LENGTH} random characters): without one, anyone can forge "
            "sign-in tokens. Generate one with `python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'` and set SECRET_KEY to it in every process of "
            "the deployment; on a development machine set DISPATCH_ENV=development instead "
            "(`make run` does)."
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # `development` allows the public SECRET_KEY default; anything else needs a real one.
    environment: Literal["production", "development"] = Field(
        default="production", validation_alias="DISPATCH_ENV"
    )
    # Secrets (and URLs that may carry a password) are left out of the repr, so a logged
    # or displayed Settings object shows none of them.
    database_url: str = Field(default="", validation_alias="DATABASE_URL", repr=False)
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL", repr=False
    )
    celery_broker_url: str = Field(default="", validation_alias="CELERY_BROKER_URL", repr=False)
    redis_prefix: str = Field(default="dispatch", validation_alias="REDIS_PREFIX")
    secret_key: str = Field(default=DEV_SECRET_KEY, validation_alias="SECRET_KEY", repr=False)
    auth_token_ttl_s: int = Field(default=30 * 24 * 3600, gt=0, validation_alias="AUTH_TOKEN_TTL_S")

    dispatch_radius_km: float = Field(default=30.0, gt=0, validation_alias="DISPATCH_RADIUS_KM")
    job_offer_ttl_s: int = Field(default=600, gt=0, validation_alias="JOB_OFFER_TTL_S")
    location_stale_s: int = Field(default=120, gt=0, validation_alias="LOCATION_STALE_S")
    # An event not announced this long after its change is re-driven by the sweep.
    relay_after_s: float = Field(default=3, gt=0, validation_alias="RELAY_AFTER_S")
    # An owed push not confirmed done this long after it was owed is re-driven by the sweep:
    # longer than one send may take (workers.apns gives a batch 15 s).
    push_due_s: float = Field(default=30, gt=15, validation_alias="PUSH_DUE_S")
    auto_approve_drivers: bool = Field(default=False, validation_alias="AUTO_APPROVE_DRIVERS")
    idempotency_window_s: int = Field(
        default=24 * 3600, gt=0, validation_alias="IDEMPOTENCY_WINDOW_S"
    )
    max_body_bytes: int = Field(default=64 * 1024, gt=0, validation_alias="MAX_BODY_BYTES")
    login_attempts_per_minute: int = Field(
        default=10, gt=0, validation_alias="LOGIN_ATTEMPTS_PER_MINUTE"
    )
    broker_publish_timeout_s: float = Field(
        default=0.5, gt=0, validation_alias="BROKER_PUBLISH_TIMEOUT_S"
    )

    # How every process writes its log: readable lines, or one JSON object a line with the
    # ids (request, task, job) that let one grep follow a job (workers.logs).
    log_format: Literal["text", "json"] = Field(default="text", validation_alias="LOG_FORMAT")

    # Where the web, gateway and Flower processes listen: loopback unless a deployment
    # (behind its load balancer) says otherwise.
    bind_host: str = Field(default="127.0.0.1", validation_alias="BIND_HOST")
    api_port: int = Field(default=8000, validation_alias="API_PORT")
    realtime_port: int = Field(default=8001, validation_alias="REALTIME_PORT")
    flower_port: int = Field(default=5555, validation_alias="FLOWER_PORT")
    # A worker's Prometheus exporter (`/metrics`, FLOWER_BASIC_AUTH); none when unset.
    metrics_port: int | None = Field(default=None, validation_alias="METRICS_PORT")
    flower_basic_auth: str = Field(default="", validation_alias="FLOWER_BASIC_AUTH", repr=False)

    apns_key_path: str = Field(default="", validation_alias="APNS_KEY_PATH")
    apns_key_id: str = Field(default="", validation_alias="APNS_KEY_ID")
    apns_team_id: str = Field(default="", validation_alias="APNS_TEAM_ID")
    apns_topic: str = Field(default="", validation_alias="APNS_TOPIC")
    apns_host: str = Field(default="", validation_alias="APNS_HOST")
    apns_port: int = Field(default=443, validation_alias="APNS_PORT")
    apns_ca_file: str = Field(default="", validation_alias="APNS_CA_FILE")

    # Sign-in and sign-up abuse (api.throttle, models.accounts). Per client address, beside
    # LOGIN_ATTEMPTS_PER_MINUTE per (email, address); the address is the socket's peer, or
    # the entry TRUSTED_PROXY_HOPS from the right of X-Forwarded-For behind that many proxies.
    login_attempts_per_address_per_minute: int = Field(
        default=30, gt=0, validation_alias="LOGIN_ATTEMPTS_PER_ADDRESS_PER_MINUTE"
    )
    registrations_per_address_per_minute: int = Field(
        default=60, gt=0, validation_alias="REGISTRATIONS_PER_ADDRESS_PER_MINUTE"
    )
    trusted_proxy_hops: int = Field(default=0, ge=0, validation_alias="TRUSTED_PROXY_HOPS")
    # Password hashes (argon2: ~0.2 s of one CPU and 64 MiB each) one process runs at once
    # (0: a quarter of its CPUs, at least 1), how many more may wait for one, and how long:
    # sign-ins hold at most slots + queue request threads (the Procfile's gunicorn has 8).
    password_hash_slots: int = Field(default=0, ge=0, validation_alias="PASSWORD_HASH_SLOTS")
    password_hash_queue: int = Field(default=3, ge=0, validation_alias="PASSWORD_HASH_QUEUE")
    password_hash_wait_s: float = Field(default=2.0, gt=0, validation_alias="PASSWORD_HASH_WAIT_S")
    # argon2-cffi's parameter profile for new hashes (a stored hash carries its own, so any
    # verifies). CHEAPEST is for test suites only: it makes a hash cost microseconds.
    password_hash_profile: Literal["RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST"] = (
        Field(default="RFC_9106_LOW_MEMORY", validation_alias="PASSWORD_HASH_PROFILE")
    )

    # The Socket.IO gateway. ALLOWED_ORIGINS: the browser origins (comma separated) it
    # accepts; none by default, since the apps are native (see `allowed_origin_list`).
    allowed_origins: str = Field(default="", validation_alias="ALLOWED_ORIGINS")
    # An Engine.IO session that has not signed in (Socket.IO CONNECT) this long is closed.
    socket_auth_timeout_s: float = Field(default=10, gt=0, validation_alias="SOCKET_AUTH_TIMEOUT_S")
    # A socket connect that cannot check its token this long (database down) is refused.
    socket_connect_timeout_s: float = Field(
        default=5, gt=0, validation_alias="SOCKET_CONNECT_TIMEOUT_S"
    )

    @property
    def allowed_origin_list(self) -> list[str]:
        """ALLOWED_ORIGINS as `scheme://host[:port]` strings, without a trailing slash."""
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    @field_validator("redis_prefix")
    @classmethod
    def _prefix_has_no_colon(cls, value: str) -> str:
        return value.rstrip(":")

    @field_validator("environment", mode="before")
    @classmethod
    def _empty_environment_is_unset(cls, value: object) -> object:
        return value or "production"

    @field_validator("secret_key")
    @classmethod
    def _empty_secret_is_unset(cls, value: str) -> str:
        return value or DEV_SECRET_KEY

    @model_validator(mode="after")
    def _secret_key_is_real_outside_development(self) -> Self:
        """Every process (web, gateway, worker, relay, Flower, the CLI) builds this object at
        start, so none of them runs on a forgeable secret."""
        if self.environment != "development" and (
            self.secret_key == DEV_SECRET_KEY or len(self.secret_key) < MIN_SECRET_KEY_LENGTH
        ):
            raise InsecureSecretKey()
        return self

    @cached_property
    def sqlalchemy_url(self) -> str:
        """`DATABASE_URL`, or the embedded SQLite file when it is unset."""
        url = self.database_url or DEFAULT_SQLITE_URL
        for scheme in ("postgres://", "postgresql://"):
            if url.startswith(scheme):  # SQLAlchemy 2.1 would pick psycopg 3 for these
                url = "postgresql+psycopg2://" + url.removeprefix(scheme)
        return url

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def broker_is_rabbitmq(self) -> bool:
        """Whether Celery's broker is RabbitMQ (an AMQP URL) rather than Redis."""
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    @property
    def apns_configured(self) -> bool:
        return bool(
            self.apns_key_path and self.apns_key_id and self.apns_team_id and self.apns_topic
        )

    def redis_key(self, *parts: str | int) -> str:
        """A Redis key under this deployment's prefix, so tests and dev never share keys."""
        return ":".join([self.redis_prefix, *(str(part) for part in parts)])


settings = Settings()
