"""The round, core-set and evaluation runners, run in-process through ``run_job``.

A project of 60 generated 16x16 images in three colour families (so a tiny proxy learns them in
a couple of epochs), with real image files in the data dir and the engine's real cache.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from app import flows
from app.coresets.schemas import CORESET_STRATEGIES
from app.db import unit_of_work
from app.embeddings.schemas import known_backbones
from app.items.models import Item
from app.items.storage import ImageFiles, image_path
from app.jobs import dispatch
from app.jobs.models import Job
from app.jobs.runtime import JobContext, run_job
from app.projects.models import Project
from app.rounds import service as rounds
from app.rounds.models import Round, Selection
from app.rounds.schemas import PROXY_ARCHS, ROUND_STRATEGIES, SCRATCH_ARCHS, ProxyConfig
from app.settings import Settings
from svp.backbones import get_spec
from tests.factories import Factory
from worker import runners

CLASSES = ["red", "green", "blue"]
TINY = ProxyConfig(arch="tiny_cnn", epochs=2, batch_size=16, image_size=16)


@pytest.fixture(autouse=True, scope="module")
def worker_runners() -> None:
    """These tests run jobs as a worker does: with the worker's runners registered."""
    runners.register()


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Two cores are shared by everyone: torch gets one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sent(factory: Factory, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Jobs are run by the test itself, never by the server's pool in the background."""
    calls: list[int] = []
    monkeypatch.setattr(dispatch, "send", lambda *, job_id, kind: calls.append(job_id))
    return calls


def colour_png(cls: int, i: int) -> bytes:
    """A 16x16 image mostly of its class's colour, with noise so each one is distinct."""
    rng = np.random.default_rng(1000 * cls + i)
    base = np.zeros((16, 16, 3), dtype=np.int16)
    base[..., cls] = 200
    pixels = np.clip(base + rng.integers(-40, 40, size=base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def make_images(settings: Settings, project: Project, n: int, split: str) -> list[dict[str, Any]]:
    """``n`` images per class written to the image store and inserted as items."""
    store = ImageFiles(settings.images_dir)
    out = []
    with unit_of_work() as db:
        for cls in range(len(CLASSES)):
            for i in range(n):
                data = colour_png(cls, i + (0 if split == "pool" else 500))
                h = hashlib.sha256(data).hexdigest()
                store.put(h, data)
                item = Item(
                    project_id=project.id,
                    content_hash=h,
                    name=f"{split}/{CLASSES[cls]}_{i}.png",
                    media_type="image/png",
                    width=16,
                    height=16,
                    split=split,
                )
                db.add(item)
                db.flush()
                out.append({"id": item.id, "cls": CLASSES[cls], "hash": h})
    return out


def set_labels(items: list[dict[str, Any]]) -> None:
    """Give items their true class as current label."""
    with unit_of_work() as db:
        for it in items:
            db.get(Item, it["id"]).label = it["cls"]  # type: ignore[union-attr]


@pytest.fixture
def world(factory: Factory, settings: Settings, sent: list[int]) -> dict[str, Any]:
    """A project of 60 pool images (20 per class) and 9 test images, none labelled."""
    eng = factory.user("engineer")
    project = factory.project(eng, classes=CLASSES, image_size=16)
    return {
        "project": project,
        "pool": make_images(settings, project, 20, "pool"),
        "test": make_images(settings, project, 3, "test"),
        "settings": settings,
    }


def start(project_id: int, strategy: str, batch_size: int, **kw: Any) -> tuple[int, int]:
    """Start a round through the service (as the API does); returns (round id, job id)."""
    with unit_of_work() as db:
        project = db.get(Project, project_id)
        assert project is not None
        rnd = rounds.start_round(
            db,
            project=project,
            strategy=strategy,
            batch_size=batch_size,
            proxy=kw.get("proxy", TINY),
            seed=kw.get("seed", 7),
            created_by=None,
            supersede=kw.get("supersede", False),
        )
        assert rnd.job_id is not None
        return rnd.id, rnd.job_id


def load(round_id: int) -> tuple[Round, Job, list[Selection]]:
    """A round, its job and its batch in rank order."""
    with unit_of_work(write=False) as db:
        rnd = db.get(Round, round_id)
        assert rnd is not None
        job = db.get(Job, rnd.job_id)
        assert job is not None
        batch = list(
            db.scalars(
                select(Selection).where(Selection.round_id == round_id).order_by(Selection.rank)
            )
        )
        return rnd, job, batch


def test_cold_start_random(world: dict[str, Any]) -> None:
    rid, jid = start(world["project"].id, "least_confidence", 6)
    assert run_job(jid, worker="test") == "succeeded"
    rnd, job, batch = load(rid)
    assert (rnd.status, job.status, job.stage) == ("labeling", "succeeded", "saving")
    assert [s.rank for s in batch] == list(range(6))
    assert len({s.item_id for s in batch}) == 6
    assert all(s.suggested_label is None for s in batch)  # no proxy yet: nothing to suggest
    assert rnd.metrics["cold_start"] == "random"
    assert (rnd.metrics["labeled"], rnd.metrics["pool"], rnd.metrics["seed"]) == (0, 60, 7)
    assert rnd.started_at is not None
    assert job.result == {"round_id": rid, "selected": 6, "metrics": rnd.metrics}
    pool_ids = {it["id"] for it in world["pool"]}
    assert {s.item_id for s in batch} <= pool_ids


def test_cold_start_kcenter_on_pixels_spreads_over_the_classes(
    world: dict[str, Any], factory: Factory
) -> None:
    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        project.settings = {**project.settings, "cold_start": "kcenter"}
    rid, jid = start(world["project"].id, "random", 3)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.metrics["cold_start"] == "kcenter"
    by_id = {it["id"]: it["cls"] for it in world["pool"]}
    # Three colour families far apart in pixel space: k-centres takes one of each.
    assert sorted(by_id[s.item_id] for s in batch) == sorted(CLASSES)


STAGES = ("loading", "embedding", "training", "scoring", "selecting", "saving")


@pytest.mark.parametrize("strategy", ["least_confidence", "kcenter", "entropy", "margin"])
def test_a_trained_round_selects_unlabelled_items_with_suggestions(
    world: dict[str, Any], strategy: str
) -> None:
    labelled = [it for it in world["pool"] if int(it["id"]) % 3 == 0]
    set_labels(labelled)
    set_labels(world["test"])
    rid, jid = start(world["project"].id, strategy, 8)
    started = time.perf_counter()
    assert run_job(jid) == "succeeded"
    wall = time.perf_counter() - started
    rnd, job, batch = load(rid)
    assert rnd.status == "labeling", rnd.error
    assert len(batch) == 8
    assert not {s.item_id for s in batch} & {it["id"] for it in labelled}
    assert all(s.suggested_label in CLASSES for s in batch)
    assert all(0 < (s.suggested_prob or 0) <= 1 for s in batch)
    # Ranked by score, most worth labelling first.
    scores = [s.score for s in batch]
    assert scores == sorted(scores, reverse=True)
    m = rnd.metrics
    assert (m["labeled"], m["pool"], m["test_labeled"]) == (len(labelled), 60 - len(labelled), 9)
    assert (m["seed"], m["arch"], m["strategy"], m["cold_start"]) == (7, "tiny_cnn", strategy, None)
    assert 0 <= m["proxy_test_accuracy"] <= 1
    # The stages are parts of the job's own time: each measured, none counted twice or left out
    # as an absolute clock reading; a proxy trained for an epoch takes measurable time.
    stages = [m[f"seconds_{stage}"] for stage in STAGES]
    assert min(stages) >= 0
    assert m["seconds_training"] > 0
    assert sum(stages) <= wall + 1e-3, (stages, wall)  # each stage is rounded to 0.1 ms
    assert job.progress == 1.0


def test_the_proxy_learns_the_colours(world: dict[str, Any]) -> None:
    set_labels(world["pool"][::2])
    set_labels(world["test"])
    rid, jid = start(
        world["project"].id, "least_confidence", 5, proxy=TINY.model_copy(update={"epochs": 6})
    )
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.metrics["proxy_test_accuracy"] >= 0.66
    by_id = {it["id"]: it["cls"] for it in world["pool"]}
    right = sum(s.suggested_label == by_id[s.item_id] for s in batch)
    assert right >= 3


def test_running_a_round_twice_leaves_one_batch(world: dict[str, Any]) -> None:
    set_labels(world["pool"][:9])
    rid, jid = start(world["project"].id, "least_confidence", 5)
    assert run_job(jid) == "succeeded"
    first = [s.item_id for s in load(rid)[2]]
    # A redelivery after the job finished: nothing to do.
    assert run_job(jid) == "succeeded"
    # A worker that died after saving, before the job was marked done: the task runs again.
    with unit_of_work() as db:
        db.get(Job, jid).status = "queued"  # type: ignore[union-attr]
    assert run_job(jid) == "succeeded"
    assert [s.item_id for s in load(rid)[2]] == first
    # One that died mid-save with the round still running: the batch is replaced, not added to.
    with unit_of_work() as db:
        db.get(Job, jid).status = "queued"  # type: ignore[union-attr]
        db.get(Round, rid).status = "running"  # type: ignore[union-attr]
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.status == "labeling"
    assert [s.item_id for s in batch] == first  # same seed, same batch
    with unit_of_work(write=False) as db:
        n = db.scalar(select(func.count()).select_from(Selection).where(Selection.round_id == rid))
    assert n == 5


def test_cancel_stops_training_at_the_next_epoch(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_labels(world["pool"][:15])
    rid, jid = start(world["project"].id, "entropy", 5, proxy=TINY.model_copy(update={"epochs": 8}))
    epochs_seen: list[float] = []
    original = JobContext.progress

    def progress(self: JobContext, stage: str, fraction: float) -> None:
        if stage == "training" and fraction > 0:
            epochs_seen.append(fraction)
            if len(epochs_seen) == 2:
                # An engineer presses cancel while the second epoch ends.
                with unit_of_work() as db:
                    flows.cancel_round(db, round_id=rid)
        original(self, stage, fraction)

    monkeypatch.setattr(JobContext, "progress", progress)
    assert run_job(jid) == "canceled"
    rnd, job, batch = load(rid)
    assert (rnd.status, job.status, batch) == ("canceled", "canceled", [])
    assert rnd.finished_at is not None
    assert len(epochs_seen) == 2  # not the 8 asked for


def test_a_failure_fails_the_round_with_the_reason(world: dict[str, Any]) -> None:
    set_labels(world["pool"][:6])
    image_path(world["settings"].images_dir, world["pool"][6]["hash"]).unlink()
    rid, jid = start(world["project"].id, "margin", 4)
    assert run_job(jid) == "failed"
    rnd, job, _ = load(rid)
    assert rnd.status == "failed"
    missing = world["pool"][6]["hash"]
    assert "ObjectMissing" in (rnd.error or "")
    assert missing in (rnd.error or "")
    assert "ObjectMissing" in (job.error or "")
    # The project is free for the next round.
    start(world["project"].id, "margin", 4)


def test_a_canceled_round_is_not_run(world: dict[str, Any]) -> None:
    rid, jid = start(world["project"].id, "random", 4)
    with unit_of_work() as db:
        flows.cancel_round(db, round_id=rid)
    assert run_job(jid) == "canceled"
    assert load(rid)[2] == []


def test_coreset_and_evaluation(world: dict[str, Any], factory: Factory) -> None:
    from app.coresets.service import start_coreset
    from app.evaluations.service import start_evaluation

    set_labels(world["pool"][:30])
    set_labels(world["test"])
    labelled = {it["id"] for it in world["pool"][:30]}
    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        jobs = [
            start_coreset(
                db,
                project=project,
                fraction=0.2,
                strategy=strategy,
                proxy=TINY,
                seed=3,
                created_by=None,
            ).id
            for strategy in ("forgetting", "kcenter", "least_confidence")
        ]
        ev = start_evaluation(
            db,
            project=project,
            target="tiny_cnn",
            epochs=2,
            batch_size=16,
            lr=None,
            image_size=16,
            seed=3,
            created_by=None,
        ).id
    for jid in [*jobs, ev]:
        assert run_job(jid) == "succeeded"
    with unit_of_work(write=False) as db:
        results = [db.get(Job, j).result for j in jobs]  # type: ignore[union-attr]
        evaluation = db.get(Job, ev).result  # type: ignore[union-attr]
    for r in results:
        assert r is not None
        assert len(r["items"]) == 6
        assert len(set(r["items"])) == 6
        assert set(r["items"]) <= labelled
        assert len(r["scores"]) == 6
        assert r["fraction"] == 0.2
        assert 0 <= r["proxy_test_accuracy"] <= 1
    assert evaluation is not None
    assert (evaluation["labels"], evaluation["test_items"], evaluation["target"]) == (
        30,
        9,
        "tiny_cnn",
    )
    assert 0 <= evaluation["accuracy"] <= 1


def test_the_api_knows_the_engines_models_strategies_and_backbones() -> None:
    from svp.backbones import backbone_names
    from svp.models import model_names
    from svp.strategies import Strategy

    assert set(SCRATCH_ARCHS) == set(model_names())
    # fasttext (text projects) is trained by its own runner, not the image model zoo.
    assert set(PROXY_ARCHS) == {"linear", "fasttext", *model_names()}
    assert set(ROUND_STRATEGIES) == {s.value for s in Strategy} - {"forgetting"}
    assert set(CORESET_STRATEGIES) == {s.value for s in Strategy}
    # The server lists a built-in backbone where its wheel is installed, as the engine does, of
    # either modality: the worker embeds texts too (a text encoder's side is 0 on both).
    assert set(known_backbones()) == set(backbone_names())
    for name, size in known_backbones().items():
        assert size == get_spec(name).image_size


# ---- the linear proxy on a frozen backbone's embeddings (DESIGN 4b) ----

LINEAR = ProxyConfig(arch="linear")


def test_an_embed_job_embeds_every_image_once(world: dict[str, Any]) -> None:
    from app.embeddings.service import start_embedding

    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        jid = start_embedding(
            db, project=project, backbone=None, image_size=None, created_by=None
        ).id
    assert run_job(jid, worker="w1") == "succeeded"
    with unit_of_work(write=False) as db:
        result = db.get(Job, jid).result  # type: ignore[union-attr]
    assert result is not None
    assert (result["total"], result["images"], result["backbone"]) == (69, 69, "efficientnet_lite0")
    assert result["workers"] == {"w1": 1}
    # A second job finds everything embedded: nothing to do, no chunk planned.
    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        again = start_embedding(
            db, project=project, backbone=None, image_size=None, created_by=None
        )
    assert run_job(again.id) == "succeeded"
    with unit_of_work(write=False) as db:
        assert db.get(Job, again.id).result["images"] == 0  # type: ignore[union-attr,index]


def test_a_random_round_on_a_fresh_linear_project_is_random(world: dict[str, Any]) -> None:
    """Issue 17: ``cold_start: auto`` made a random round's first batch TypiClust on a linear
    project. Random it is, and it embeds nothing to choose it."""
    rid, jid = start(world["project"].id, "random", 6, proxy=LINEAR)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.status == "labeling", rnd.error
    assert rnd.metrics["cold_start"] == "random"
    assert rnd.metrics["embedding"] is None
    assert len({s.item_id for s in batch}) == 6


def test_a_linear_project_starts_typical_first_then_suggests_with_a_calibrated_head(
    world: dict[str, Any],
) -> None:
    pid = world["project"].id
    set_labels(world["test"])
    rid, jid = start(pid, "auto", 6, proxy=LINEAR)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.status == "labeling", rnd.error
    # Cold start on embeddings: TypiClust, no suggestions, and it covers the three colours.
    assert rnd.metrics["cold_start"] == "typiclust"
    assert rnd.metrics["embedding"]["images"] == 69
    assert all(s.suggested_label is None for s in batch)
    by_id = {it["id"]: it for it in world["pool"]}
    assert {by_id[s.item_id]["cls"] for s in batch} == set(CLASSES)

    first = {s.item_id for s in batch}
    set_labels([by_id[i] for i in first])
    # Labels set directly, not through the API: the batch is closed by superseding it.
    rid, jid = start(pid, "auto", 9, proxy=LINEAR, seed=8, supersede=True)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.status == "labeling", rnd.error
    m = rnd.metrics
    assert (m["arch"], m["backbone"], m["labeled"], m["cold_start"]) == (
        "linear",
        "efficientnet_lite0",
        6,
        None,
    )
    # Warm: nothing was embedded again.
    assert m["embedding"] is None
    # Two labels per class: auto stays typical-first and says why.
    assert m["selection"]["auto_choice"] == "typiclust"
    assert m["calibration"]["temperature"] > 0
    # Colours are easy for ImageNet features: the head is right on the test split and the
    # suggestions it pre-selects are right too.
    assert m["proxy_test_accuracy"] >= 0.8
    assert all(s.suggested_label in CLASSES for s in batch)
    right = sum(s.suggested_label == by_id[s.item_id]["cls"] for s in batch)
    assert right >= 7, [(s.suggested_label, by_id[s.item_id]["cls"]) for s in batch]
    assert not {s.item_id for s in batch} & first


def test_a_core_set_on_embeddings(world: dict[str, Any]) -> None:
    from app.coresets.service import start_coreset

    labelled = world["pool"][::2]  # ten of each colour
    set_labels(labelled)
    set_labels(world["test"])
    with unit_of_work() as db:
        project = db.get(Project, world["project"].id)
        assert project is not None
        jobs = [
            start_coreset(
                db,
                project=project,
                fraction=0.2,
                strategy=strategy,
                proxy=LINEAR,
                seed=3,
                created_by=None,
            ).id
            for strategy in ("typiclust", "margin")
        ]
    for jid in jobs:
        assert run_job(jid) == "succeeded"
        with unit_of_work(write=False) as db:
            r = db.get(Job, jid).result  # type: ignore[union-attr]
        assert r is not None
        assert len(set(r["items"])) == 6
        assert set(r["items"]) <= {it["id"] for it in labelled}
        assert r["proxy_test_accuracy"] >= 0.8


def test_a_linear_round_on_the_int8_backbone_has_its_own_embeddings(
    world: dict[str, Any],
) -> None:
    """``efficientnet_lite0_int8`` runs through the same jobs as any backbone; its vectors are
    kept apart from the float network's (another store), and its head is as right here."""
    pid = world["project"].id
    set_labels(world["test"])
    by_id = {it["id"]: it for it in world["pool"]}
    # The float backbone's embeddings first: the int8 round must not reuse them.
    rid, jid = start(pid, "auto", 6, proxy=LINEAR)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    set_labels([by_id[s.item_id] for s in batch])

    int8 = ProxyConfig(arch="linear", backbone="efficientnet_lite0_int8")
    rid, jid = start(pid, "auto", 9, proxy=int8, seed=8, supersede=True)
    assert run_job(jid) == "succeeded"
    rnd, _, batch = load(rid)
    assert rnd.status == "labeling", rnd.error
    m = rnd.metrics
    assert (m["backbone"], m["labeled"]) == ("efficientnet_lite0_int8", 6)
    # Every pool and test image embedded anew, by the int8 model.
    assert m["embedding"]["images"] == 69
    assert m["proxy_test_accuracy"] >= 0.8
    right = sum(s.suggested_label == by_id[s.item_id]["cls"] for s in batch)
    assert right >= 7, [(s.suggested_label, by_id[s.item_id]["cls"]) for s in batch]
