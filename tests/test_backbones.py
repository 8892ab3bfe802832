"""Users' backbones on both sides: a bad one (``SVP_BACKBONES``) fails alone with its reason (in
the worker, in the start-up logs and in ``/api/health`` for admins), and an embedding's input
side is bounded by what the backbone uses. tests/test_embeddings.py compares the server's
built-in list with the engine's registry."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchvision
from fastapi.testclient import TestClient
from PIL import Image

from app.db import unit_of_work
from app.embeddings.service import start_embedding
from app.items.models import Item
from app.items.storage import ImageFiles
from app.jobs import dispatch
from app.jobs.models import Job
from app.jobs.runtime import run_job
from app.main import create_app
from app.projects.models import Project
from app.settings import Settings, UserBackbones, get_settings
from svp import backbones
from tests.factories import Factory
from tests.procs import stack, wait_for
from worker import embed, runners


@pytest.fixture
def user_backbones(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Path]]:
    """SVP_BACKBONES with one good backbone, a missing and a corrupt weights file, and an entry
    with a typo; the engine's registrations made meanwhile end with the test."""
    good = tmp_path / "good.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), good)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:4096])  # a copy cut short
    missing = tmp_path / "missing.pt"
    monkeypatch.setenv(
        "SVP_BACKBONES",
        json.dumps(
            {
                "mine": {"arch": "mobilenet_v3_small", "weights": str(good), "image_size": 64},
                "gone": {"arch": "resnet18", "weights": str(missing)},
                "broken": {"arch": "mobilenet_v3_small", "weights": str(corrupt)},
                "typo": {"arch": "resnet18", "weigths": str(good)},
            }
        ),
    )
    get_settings.cache_clear()
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    monkeypatch.setattr(backbones, "_LOADED", dict(backbones._LOADED))
    monkeypatch.setattr(embed, "_failures", {})
    yield {"good": good, "corrupt": corrupt, "missing": missing}
    get_settings.cache_clear()


def random_images(n: int, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    return torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)


def add_images(settings: Settings, project_id: int, n: int) -> None:
    """``n`` distinct PNG files in the image store, each an item of the project."""
    files = ImageFiles(settings.images_dir)
    with unit_of_work() as db:
        for i in range(n):
            pixels = np.full((16, 16, 3), 40 * i, dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="PNG")
            data = buf.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            files.put(digest, data)
            db.add(
                Item(
                    project_id=project_id,
                    content_hash=digest,
                    name=f"{i}.png",
                    media_type="image/png",
                    width=16,
                    height=16,
                    split="pool",
                )
            )


# --- a bad user backbone fails alone ----------------------------------------------------------


def test_settings_read_backbones_entry_by_entry() -> None:
    read = UserBackbones.read(
        '{"ok": {"arch": "resnet18", "weights": "/w.pt"}, "big": {"arch": "resnet18",'
        ' "weights": "/w.pt", "image_size": 5000}, "../up": {}}'
    )
    assert set(read.usable) == {"ok"}
    assert "image_size" in read.errors["big"]
    assert "name" in read.errors["../up"]
    assert set(UserBackbones.read("{not json").errors) == {"SVP_BACKBONES"}
    assert set(UserBackbones.read("[1, 2]").errors) == {"SVP_BACKBONES"}
    assert UserBackbones.read("") == UserBackbones()


def test_a_bad_user_backbone_fails_alone_in_the_worker(user_backbones: dict[str, Path]) -> None:
    errors = embed.register_user_backbones()
    assert set(errors) == {"gone", "broken", "typo"}
    assert "missing.pt" in errors["gone"]
    assert "cannot read weights" in errors["broken"]
    assert "weights" in errors["typo"]
    images = random_images(2, 32)
    # The built-in and the good user's backbone embed as if nothing else were configured.
    assert embed.backbone("efficientnet_lite0").embed(images).shape == (2, 1280)
    assert embed.backbone("mine").embed(images).shape == (2, 1024)
    assert embed.store("efficientnet_lite0", 128).dim == 1280
    with pytest.raises(embed.BackboneUnusable, match="backbone 'broken' cannot be used"):
        embed.backbone("broken")
    with pytest.raises(embed.BackboneUnusable, match=r"backbone 'gone' cannot be used.*missing"):
        embed.store("gone", 224)
    # A weights file put right is tried again, without restarting the worker.
    user_backbones["missing"].write_bytes(user_backbones["good"].read_bytes())
    errors = embed.register_user_backbones()
    assert "gone" in errors  # resnet18 weights were asked for; these are mobilenet's
    assert "do not fit resnet18" in errors["gone"]


def test_embed_jobs_run_beside_a_bad_user_backbone(
    user_backbones: dict[str, Path], factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    runners.register()
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: None)
    project = factory.project(factory.user("engineer"))
    add_images(get_settings(), project.id, 3)
    with unit_of_work() as db:
        p = db.get(Project, project.id)
        assert p is not None
        lite0 = start_embedding(db, project=p, backbone=None, image_size=None, created_by=None)
        bad = start_embedding(db, project=p, backbone="broken", image_size=None, created_by=None)
        lite0_id, bad_id = lite0.id, bad.id
    assert run_job(lite0_id, worker="w1") == "succeeded"
    assert run_job(bad_id, worker="w1") == "failed"
    with unit_of_work(write=False) as db:
        done, failed = db.get(Job, lite0_id), db.get(Job, bad_id)
        assert done is not None
        assert failed is not None
        assert (done.result or {}).get("images") == 3
        assert "backbone 'broken' cannot be used" in (failed.error or "")


def test_health_names_bad_backbones_to_admins_only(
    user_backbones: dict[str, Path], factory: Factory
) -> None:
    admin = factory.client(factory.user("admin")).get("/api/health")
    assert admin.status_code == 200
    problems = admin.json()["backbones"]
    assert set(problems) == {"gone", "broken", "typo"}
    assert "does not exist" in problems["gone"]
    assert "damaged zip" in problems["broken"]
    for client in (
        factory.client(factory.user("engineer")),
        factory.client(factory.user("annotator")),
        factory.anonymous(),
    ):
        body = client.get("/api/health").json()
        assert "backbones" not in body
        assert str(user_backbones["missing"]) not in json.dumps(body)


def test_health_shows_no_backbone_problem_when_there_is_none(factory: Factory) -> None:
    admin = factory.client(factory.user("admin")).get("/api/health")
    assert admin.json()["backbones"] == {}


def test_the_server_logs_each_bad_backbone_at_start(
    user_backbones: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), TestClient(create_app()):
        pass
    logged = " ".join(r.getMessage() for r in caplog.records)
    for name in ("gone", "broken", "typo"):
        assert f"backbone {name} is unusable" in logged
    assert "backbone mine" not in logged


# --- embedding sizes are bounded by the backbone --------------------------------------------


def test_embedding_sizes_stop_at_the_backbones_own(factory: Factory) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    add_images(get_settings(), project.id, 6)
    c = factory.client(eng)
    url = f"/api/projects/{project.id}/embeddings"
    r = c.post(url, json={"image_size": 1024})
    assert r.status_code == 422
    assert "embeds at 128 px" in r.text
    assert c.post(url, json={"image_size": 129}).status_code == 422
    assert c.post(url, json={"image_size": 96}).status_code == 202
    assert c.post(url, json={"image_size": 128}).status_code == 202
    rounds = f"/api/projects/{project.id}/rounds"
    big = {"strategy": "auto", "batch_size": 5, "proxy": {"arch": "linear", "image_size": 512}}
    r = c.post(rounds, json=big)
    assert r.status_code == 422
    assert "embeds at 128 px" in r.text
    big["proxy"]["image_size"] = 128  # type: ignore[index]
    assert c.post(rounds, json=big).status_code == 202


def test_the_worker_refuses_a_side_above_the_backbones_own(settings: Settings) -> None:
    # A job queued before the server's bound (or sent by hand) fails at once, not by OOM.
    with pytest.raises(ValueError, match="embeds at 128 px"):
        embed.store("efficientnet_lite0", 1024)
    assert embed.store("efficientnet_lite0", 64).image_size == 64


@pytest.mark.slow
def test_real_server_and_worker_name_a_bad_backbone_at_start(
    tmp_path: Path, database_url: str, broker_url: str
) -> None:
    bad = {"gone": {"arch": "resnet18", "weights": str(tmp_path / "missing.pt")}}
    env = {"SVP_BACKBONES": json.dumps(bad)}
    with stack(tmp_path, database_url=database_url, broker_url=broker_url, extra_env=env) as s:
        server = s.serve()
        worker = s.worker()
        wait_for(
            lambda: "event=backbones usable=" in worker.log(),
            120,
            f"the worker never reported its backbones:\n{s.logs()}",
            worker,
        )
        assert "backbone=gone event=unusable" in worker.log()
        # The built-ins stay usable: the worker lists lite0 among what it can load.
        assert "usable=efficientnet_lite0" in worker.log()
        assert "backbone gone is unusable" in server.log()
        c = httpx.Client(base_url=s.url, timeout=30)
        assert "backbones" not in c.get("/api/health").json()
        r = c.post("/api/auth/login", json={"username": "admin", "password": "admin-password"})
        assert r.status_code == 200, r.text
        assert set(c.get("/api/health").json()["backbones"]) == {"gone"}
