"""One settings class, read from the environment (prefix ``SVP_``) by the server and the worker."""

from __future__ import annotations

import secrets
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Development secrets are made per data dir; this is the literal we refuse outside development.
_UNSAFE_SECRETS = {"", "changeme", "secret", "dev"}


class Settings(BaseSettings):
    """Configuration of SVP Label; every field maps to an ``SVP_<NAME>`` variable."""

    model_config = SettingsConfigDict(env_prefix="SVP_", env_file=".env", extra="ignore")

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./svp-data")
    database_url: str = ""
    broker_url: str = ""
    secret_key: str = ""
    admin_username: str | None = None
    admin_password: str | None = None
    max_upload_mb: int = Field(default=2048, ge=1)
    # The session cookie carries Secure only behind https, so plain http://127.0.0.1 works.
    cookie_secure: bool = False
    session_hours: int = Field(default=24 * 7, ge=1)
    login_attempts_per_minute: int = Field(default=10, ge=1)
    # Largest decoded image accepted, in pixels; Pillow's own bomb guard trips at twice this.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    # Runs import jobs in the server's own thread pool instead of the broker (tests, tiny setups).
    inline_jobs: bool = False
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0)
    # A running job whose worker has not been seen for this long is re-sent or failed.
    worker_dead_after_seconds: float = Field(default=60.0, gt=0)
    # A queued job handed to the broker this long ago and never started is sent again (a message
    # lost with a killed worker); a duplicate delivery is harmless, as a job is claimed once.
    job_resend_after_seconds: float = Field(default=1800.0, gt=0)
    log_level: str = "INFO"

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _normalise_database_url(cls, value: str) -> str:
        # Users paste the URLs their tools print; SQLAlchemy wants an explicit psycopg 3 driver.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'svp.sqlite3'}"
        if not self.broker_url:
            # kombu's SQLAlchemy transport: a broker in the data dir that needs no server.
            self.broker_url = f"sqla+sqlite:///{self.data_dir / 'broker.sqlite3'}"
        if self.secret_key.strip().lower() in _UNSAFE_SECRETS:
            if self.environment == "production":
                raise ValueError("SVP_SECRET_KEY must be set to a long random value in production")
            self.secret_key = _secret_from_data_dir(self.data_dir)
        return self

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    @property
    def images_dir(self) -> Path:
        """Where image files live, one per content hash."""
        return self.data_dir / "images"

    @property
    def uploads_dir(self) -> Path:
        """Where uploads are streamed before an import job reads them."""
        return self.data_dir / "uploads"

    @property
    def cache_dir(self) -> Path:
        """Where the engine keeps its memory-mapped tensor caches."""
        return self.data_dir / "cache"

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


def _secret_from_data_dir(data_dir: Path) -> str:
    """Make the development secret once and keep it, so sessions survive a restart."""
    path = data_dir / "secret_key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value)
    path.chmod(0o600)
    return value


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
