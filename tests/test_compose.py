"""The production shape in docker-compose.yml, checked by reading it (no Docker engine here).

The file is parsed and interpolated the way ``docker compose config`` does it (``$$``,
``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``), then held to what
DESIGN 4d asks of it: an S3-compatible store that comes up (healthy, with its bucket) before the
service, the service's settings pointing at it and accepted by the product's own settings class,
and workers that share no volume with the server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: installed with moto[server] (through responses), a test dependency

from app.jobs.broker import QUEUES, ROUTES
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {
    "SVP_SECRET_KEY",
    "FLOWER_BASIC_AUTH",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
ENV = {
    "SVP_SECRET_KEY": "k" * 48,
    "FLOWER_BASIC_AUTH": "admin:flower-password",
    "MINIO_ROOT_USER": "minio-admin",
    "MINIO_ROOT_PASSWORD": "minio-root-password",
    "AWS_ACCESS_KEY_ID": "svp-service",
    "AWS_SECRET_ACCESS_KEY": "svp-service-password",
}
_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


class Missing(Exception):
    """A ``${VAR:?error}`` whose variable is unset (compose refuses to start)."""


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with compose's variable syntax resolved against ``env``, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        got = env.get(name)
        unset = got is None or (op is not None and op.startswith(":") and got == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise Missing(f"{name}: {arg}")
        return got or ""

    return _VAR.sub(one, value)


def config(env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yml as ``docker compose config`` would resolve it (anchors included)."""
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    resolved: dict[str, Any] = interpolate(raw, env)
    return resolved


def queues(service: dict[str, Any]) -> set[str]:
    """The queues an ``svplabel worker`` service serves (all of them without ``--queues``)."""
    command = service["command"]
    if "--queues" not in command:
        return set(QUEUES)
    return set(command[command.index("--queues") + 1].split(","))


def workers(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``svplabel worker``."""
    return {
        name: s
        for name, s in services.items()
        if s.get("command", [])[:2] == ["svplabel", "worker"]
    }


def named_volumes(service: dict[str, Any]) -> set[str]:
    """The named volumes (or host paths) a service mounts; an anonymous one (``/data``) has none."""
    return {v.split(":", 1)[0] for v in service.get("volumes", []) if ":" in v}


def test_the_required_settings_are_the_secrets_alone() -> None:
    for name in sorted(REQUIRED):
        with pytest.raises(Missing, match=name):
            config({k: v for k, v in ENV.items() if k != name})
    config(ENV)  # with all of them set, nothing else is needed


def test_the_service_points_at_the_store_and_its_settings_are_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    services = config(ENV)["services"]
    env = services["server"]["environment"]
    assert env["SVP_STORAGE_URL"] == "s3://svp/data"
    assert env["SVP_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == ENV["AWS_ACCESS_KEY_ID"]
    for name in ("worker", "worker-gpu"):
        own = services[name]["environment"]
        assert {k: own[k] for k in env} == env, f"{name} has other settings than the server"
    # The product's settings class reads them as a server or worker in the container would.
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("SVP_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.storage_url == "s3://svp/data"
    assert settings.s3_endpoint_url == "http://minio:9000"
    assert settings.object_cache_mb == 4096
    # An empty endpoint (AWS S3 itself) stays empty rather than taking MinIO's default.
    aws = config({**ENV, "SVP_S3_ENDPOINT_URL": ""})["services"]["server"]["environment"]
    assert aws["SVP_S3_ENDPOINT_URL"] == ""


def test_workers_share_no_volume_with_the_server() -> None:
    services = config(ENV)["services"]
    server_volumes = named_volumes(services["server"])
    assert server_volumes == {"data"}
    found = workers(services)
    assert set(found) == {"worker", "worker-gpu"}
    for name, worker in found.items():
        # Not even the server's uploads: the server stages each in the store, where a worker
        # reads it (app/items/staging.py).
        assert named_volumes(worker) == set(), f"{name} mounts a named volume"
        assert worker["volumes"] == ["/data"]  # its own cache, per container
    assert queues(found["worker"]) == {"rounds", "default"}
    assert queues(found["worker-gpu"]) == {"rounds"}
    # Every queue a job can be sent to has workers without the GPU profile.
    routed = {route.queue for route in ROUTES.values()} | set(QUEUES)
    assert routed <= queues(found["worker"])
    # No service but the server mounts its volume.
    mounting = {name for name, s in services.items() if "data" in named_volumes(s)}
    assert mounting == {"server"}


def test_the_store_and_its_bucket_come_up_before_the_service() -> None:
    services = config({**ENV, "SVP_BUCKET": "labels"})["services"]
    minio, init = services["minio"], services["minio-init"]
    assert minio["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert init["restart"] == "no"
    assert services["server"]["depends_on"]["minio-init"] == {
        "condition": "service_completed_successfully"
    }
    # The bucket the one-shot service makes is the one the service stores into.
    assert services["server"]["environment"]["SVP_STORAGE_URL"] == "s3://labels/data"
    assert init["environment"]["SVP_BUCKET"] == "labels"
    script = init["command"][0]
    assert 'mc mb --ignore-existing "store/$SVP_BUCKET"' in script
    # The service's key is not MinIO's root, and its policy (valid JSON, as mc needs) writes
    # only the service's bucket.
    assert init["environment"]["AWS_ACCESS_KEY_ID"] != init["environment"]["MINIO_ROOT_USER"]
    body = script.split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    policy = json.loads(body.replace("$SVP_BUCKET", "labels"))
    writes = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == [["arn:aws:s3:::labels/*"]]
    assert "minio" not in named_volumes(services["server"])


def test_the_image_serves_the_store() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    # The package's own dependencies (boto3 among them) are what the image installs.
    assert "RUN pip install -e ." in dockerfile
    assert re.search(r'^\s*"boto3[>=<]', pyproject, re.M)
