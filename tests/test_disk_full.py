"""A full disk answers 507 with a reason and leaves nothing half-written (issue 17 #12).

The data dir is a real 1 MiB tmpfs (mounting one needs root: the test is skipped without it);
the database lives outside it, as a PostgreSQL deployment's does.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db import unit_of_work
from app.items.models import Item
from app.items.storage import image_path
from app.jobs.models import Job
from app.jobs.runtime import DISK_FULL_REASON
from app.settings import get_settings
from tests.factories import Factory

DISK_BYTES = 1024 * 1024


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs where the test's data dir will be (requested before ``factory``)."""
    path = tmp_path / "data"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _noise_png(seed: int, side: int = 180) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=0)
    return buf.getvalue()


def _used_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name != "secret_key"]


def test_an_upload_larger_than_the_free_space_is_507_and_leaves_nothing(
    small_data_dir: Path, factory: Factory
) -> None:
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    big = os.urandom(2 * DISK_BYTES)
    r = c.post(f"/api/projects/{project.id}/items", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 507, r.text
    assert "disk is full" in r.json()["detail"]
    assert str(small_data_dir) not in r.text
    assert _used_files(small_data_dir) == []  # the spooled part is deleted
    with unit_of_work(write=False) as db:
        assert db.scalar(select(func.count()).select_from(Job)) == 0
    # Space again, and the same server takes an upload that fits.
    r = c.post(
        f"/api/projects/{project.id}/items",
        files={"file": ("small.png", _noise_png(1, side=40), "image/png")},
    )
    assert r.status_code == 202, r.text
    assert factory.wait_job(r.json()["id"]).status == "succeeded"


def test_an_import_that_fills_the_disk_fails_with_the_reason_and_no_item_without_its_file(
    small_data_dir: Path, factory: Factory
) -> None:
    """The spool fits, the images it holds do not: the job says the disk is full first."""
    eng = factory.user("engineer")
    project = factory.project(eng)
    c = factory.client(eng)
    files = [("file", (f"{i}.png", _noise_png(i), "image/png")) for i in range(6)]
    assert sum(len(f[1][1]) for f in files) < DISK_BYTES * 0.7
    r = c.post(f"/api/projects/{project.id}/items", files=files)
    assert r.status_code == 202, r.text
    job = factory.wait_job(r.json()["id"])
    assert job.status == "failed"
    assert job.error is not None
    assert job.error.startswith(DISK_FULL_REASON), job.error
    images = get_settings().images_dir
    with unit_of_work(write=False) as db:
        hashes = list(db.scalars(select(Item.content_hash).where(Item.project_id == project.id)))
    for content_hash in hashes:
        assert image_path(images, content_hash).stat().st_size > 0
    assert not list(images.rglob("*.tmp")), "a half-written image was left"
