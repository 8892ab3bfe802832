"""The runners' pool reading (``worker.inputs.read_pool``) on a project of 5,000 items: keyset
pages into arrays, and what it hands on (rows, keys in input order, labels, a float16 pool)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import update

from app.db import unit_of_work
from app.items.models import Item
from tests.factories import Factory
from worker import inputs
from worker.inputs import PoolRow, PoolRows, gather_rows, label_tensor, read_pool

CLASSES = ["cat", "dog", "bird"]


def _label(ids: list[int], label: str, split: str | None = None) -> None:
    with unit_of_work() as db:
        values: dict[str, str] = {"label": label}
        if split is not None:
            values["split"] = split
        db.execute(update(Item).where(Item.id.in_(ids)).values(**values))


def test_read_pool_in_pages_returns_each_part_in_id_order(
    factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = factory.user()
    project = factory.project(owner, classes=CLASSES)
    other = factory.project(owner, classes=CLASSES)
    items = factory.items(project, 5000)
    factory.items(other, 300)  # another project's items are never read
    ids = [it.id for it in items]
    hashes = {it.id: it.content_hash for it in items}
    labelled = ids[10:400:3]
    for k, cls in enumerate(CLASSES):
        _label(labelled[k::3], cls)
    test = ids[4500:4600]
    _label(test, "dog", split="test")
    _label(ids[4600:4610], "a class the project no longer has")
    batch = list(items[1000:1050])
    factory.round_with_selection(project, batch)  # labelling: its items are someone's work
    done = factory.round_with_selection(project, items[2000:2010], status="completed")
    assert done.status == "completed"
    # Pages of 700 rows: eight pages of the pool split, edges inside every part.
    monkeypatch.setattr(inputs, "POOL_PAGE", 700)

    pool = read_pool(project.id, candidates=True)

    busy = {it.id for it in batch}
    taken = set(labelled) | set(test) | set(ids[4600:4610]) | busy
    want_candidates = [i for i in ids if i not in taken]
    assert pool.classes == CLASSES
    assert pool.pool_total == 5000 - len(test)
    assert isinstance(pool.candidates, PoolRows)
    assert pool.candidates.ids.tolist() == want_candidates
    assert pool.labeled.ids.tolist() == sorted(labelled)
    assert pool.test.ids.tolist() == test
    assert [r.label for r in pool.candidates] == [-1] * len(want_candidates)
    # Rows keep their NamedTuple face: id, content hash, class index.
    first = labelled[0]
    assert pool.labeled[0] == PoolRow(first, hashes[first], CLASSES.index("cat"))
    assert label_tensor(pool.labeled).tolist() == [
        CLASSES.index("cat" if i in labelled[0::3] else "dog" if i in labelled[1::3] else "bird")
        for i in sorted(labelled)
    ]
    assert label_tensor(pool.test).tolist() == [1] * len(test)
    keys = pool.keys()
    order = [*want_candidates, *sorted(labelled), *test]
    assert len(keys) == len(order)
    assert list(keys) == [hashes[i] for i in order]
    assert keys[len(want_candidates)] == hashes[sorted(labelled)[0]]
    assert list(keys[5:8]) == [hashes[i] for i in order[5:8]]
    # Without candidates (core-sets, evaluations): the labelled parts alone.
    labelled_only = read_pool(project.id, candidates=False)
    assert len(labelled_only.candidates) == 0
    assert labelled_only.labeled.ids.tolist() == sorted(labelled)
    assert list(labelled_only.keys()) == [hashes[i] for i in [*sorted(labelled), *test]]


def test_read_pool_of_a_missing_project_says_so(factory: Factory) -> None:
    with pytest.raises(LookupError, match="no longer exists"):
        read_pool(987654, candidates=True)


def test_gather_rows_makes_one_float16_pool_a_chunk_at_a_time() -> None:
    rows = np.random.default_rng(0).standard_normal((1000, 12)).astype(np.float32)
    asked: list[int] = []

    def read(chunk: np.ndarray) -> torch.Tensor:
        asked.append(len(chunk))
        return torch.from_numpy(rows[chunk])

    order = np.arange(999, -1, -1)
    pool = gather_rows(read, order, chunk=300)
    assert asked == [300, 300, 300, 100]
    assert pool.dtype == torch.float16
    torch.testing.assert_close(pool, torch.from_numpy(rows[order]).half())
    assert gather_rows(read, np.arange(0), chunk=300).shape == (0, 0)
