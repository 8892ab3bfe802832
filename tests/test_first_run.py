"""A first run on a machine where nothing exists yet (issue 17 #7), and the secret key file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.settings import secret_from_data_dir
from tests.conftest import BACKEND
from tests.factories import png_bytes
from tests.procs import stack, wait_for


def test_serve_makes_a_data_dir_that_does_not_exist(tmp_path: Path, database_url: str) -> None:
    """``svplabel serve`` with a data dir whose parents do not exist either: it makes them,
    migrations first (on SQLite the database is the default file inside it), and imports land."""
    data_dir = tmp_path / "not" / "yet" / "there"
    env = {"SVP_DATA_DIR": str(data_dir), "SVP_INLINE_JOBS": "true"}
    if BACKEND == "sqlite":
        env["SVP_DATABASE_URL"] = ""  # the default: svp.sqlite3 inside the data dir
    with stack(tmp_path, database_url=database_url, extra_env=env) as s:
        s.serve()
        assert (data_dir / "svp.sqlite3").exists() == (BACKEND == "sqlite")
        with httpx.Client(base_url=s.url, timeout=60) as c:
            r = c.post("/api/auth/login", json={"username": "admin", "password": "admin-password"})
            assert r.status_code == 200, r.text
            c.headers["X-CSRF-Token"] = r.json()["csrf_token"]
            pid = c.post("/api/projects", json={"name": "first", "classes": ["a"]}).json()["id"]
            r = c.post(
                f"/api/projects/{pid}/items",
                files=[("file", (f"{i}.png", png_bytes(i), "image/png")) for i in range(3)],
            )
            assert r.status_code == 202, r.text
            job = r.json()["id"]
            wait_for(
                lambda: c.get(f"/api/jobs/{job}").json()["status"] == "succeeded",
                60,
                f"import did not succeed: {c.get(f'/api/jobs/{job}').text}",
            )
        assert (data_dir / "secret_key").exists()


@pytest.mark.database_free
def test_a_secret_key_file_left_empty_by_a_crash_does_not_block_the_next_start(
    tmp_path: Path,
) -> None:
    """The old code created the file, then wrote it: a crash between left it empty, and every
    later start failed with "secret_key is empty". Now the file appears whole or not at all."""
    (tmp_path / "secret_key").write_text("")
    value = secret_from_data_dir(tmp_path)
    assert len(value) >= 32
    assert (tmp_path / "secret_key").read_text() == value
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert secret_from_data_dir(tmp_path) == value
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temp file left


@pytest.mark.database_free
def test_processes_starting_together_share_one_secret_key(tmp_path: Path) -> None:
    """Eight processes making the secret at once all read the one that won."""
    code = "import sys; from pathlib import Path; from app.settings import secret_from_data_dir;"
    code += " print(secret_from_data_dir(Path(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "fresh")], stdout=subprocess.PIPE
        )
        for _ in range(8)
    ]
    values = {p.communicate(timeout=60)[0].decode().strip() for p in procs}
    assert len(values) == 1
    assert len(values.pop()) >= 32
