"""Items a round leaves out because the objects they were imported from are gone (DESIGN 4d).

An item imported by reference has no bytes of its own. When its object is deleted from the
bucket, a round must neither fail nor hand annotators an image nobody can see:

- loading: reading pixels or embedding raises ``ObjectsGone`` once every other item is in;
  the round takes those items out of its pool (``Skips.leave_out``) and loads again;
- saving: the objects of the batch about to be saved are checked with a HEAD each (an image
  embedded before its deletion is read from the embedding store, not the bucket); those gone
  are dropped and the strategy picks the next candidates in their place (``Skips.check_batch``).

Either way the round's metrics list them under ``skipped``: ``{item_id, name, reason}`` each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from torch import nn

import svp
from app.db import unit_of_work
from app.items.availability import ObjectsGone, gone_objects
from app.items.models import Item
from worker.inputs import Pool, PoolRows

# Times the batch is checked and topped up before it is saved as it is (each pass picks again
# for the shortfall; a bucket emptied wholesale must not make a round pick forever).
MAX_PASSES = 5
# Skipped items the metrics list by name (the count covers them all).
MAX_LISTED = 100

# More picks for a batch: (candidates chosen so far, candidates whose objects are gone, how
# many more) -> a selection over the candidates' indices.
PickMore = Callable[[list[int], list[int], int], svp.SelectionResult]


@dataclass
class Skips:
    """The items of one round whose objects are gone: content hash -> reason."""

    project_id: int
    gone: dict[str, str] = field(default_factory=dict)

    def add(self, exc: ObjectsGone) -> None:
        """Note items found gone while loading; the caller then loads again without them."""
        if set(exc.gone) <= set(self.gone):
            # Left out already, yet still asked for: a fault, not a deletion.
            raise RuntimeError(f"items left out of the round were read again: {exc}") from exc
        self.gone.update(exc.gone)

    def leave_out(self, pool: Pool) -> None:
        """Take the items found gone out of the pool: candidates, labelled and test rows."""
        if self.gone:
            pool.candidates = self._without(pool.candidates)
            pool.labeled = self._without(pool.labeled)
            pool.test = self._without(pool.test)

    def _without(self, rows: PoolRows) -> PoolRows:
        """The rows whose keys are not gone (compared as the arrays' bytes, no row objects)."""
        gone = np.array([k.encode("ascii") for k in self.gone], dtype=rows.key_bytes.dtype)
        keep = ~np.isin(rows.key_bytes, gone)
        return PoolRows(rows.ids[keep], rows.key_bytes[keep], rows.labels[keep])

    def check_batch(
        self, pool: Pool, result: svp.SelectionResult, pick_more: PickMore
    ) -> svp.SelectionResult:
        """The batch with every item whose object is gone replaced by the next pick, as far as
        the candidates go; ranks follow the picks (the replacements last)."""
        picks = list(
            zip(
                result.indices,
                result.scores,
                result.predicted_class,
                result.predicted_prob,
                strict=True,
            )
        )
        wanted = len(picks)
        unchecked = [p[0] for p in picks]
        out: set[int] = set()
        checked = 0
        for attempt in range(MAX_PASSES + 1):
            gone = gone_objects(self.project_id, [pool.candidates[i].key for i in unchecked])
            checked += len(unchecked)
            if not gone:
                break
            self.gone.update(gone)
            out |= {i for i in unchecked if pool.candidates[i].key in gone}
            picks = [p for p in picks if p[0] not in out]
            shortfall = wanted - len(picks)
            left = len(pool.candidates) - len(picks) - len(out)
            if shortfall <= 0 or left <= 0 or attempt == MAX_PASSES:
                break
            # Ask for more than the shortfall where many were gone: a bucket half emptied
            # fills the batch in a pass or two, not one item a pass.
            kept_share = max(1.0 - len(out) / checked, 0.05)
            more = pick_more(
                [p[0] for p in picks], sorted(out), min(left, math.ceil(shortfall / kept_share))
            )
            picks += zip(
                more.indices, more.scores, more.predicted_class, more.predicted_prob, strict=True
            )
            unchecked = list(more.indices)
        if not out:
            return result
        # In pick order, the batch's size at most (the last pass may have asked for more).
        picks = picks[:wanted]
        return replace(
            result,
            indices=[p[0] for p in picks],
            scores=[p[1] for p in picks],
            predicted_class=[p[2] for p in picks],
            predicted_prob=[p[3] for p in picks],
        )

    def listed(self) -> list[dict[str, Any]]:
        """The skipped items for the round's metrics: ``{item_id, name, reason}``."""
        if not self.gone:
            return []
        hashes = list(self.gone)[:MAX_LISTED]
        with unit_of_work(write=False) as db:
            rows = db.execute(
                select(Item.id, Item.name, Item.content_hash)
                .where(Item.project_id == self.project_id, Item.content_hash.in_(hashes))
                .order_by(Item.id)
            ).tuples()
            return [{"item_id": i, "name": n, "reason": self.gone[h]} for i, n, h in rows]


def pick_more(
    *,
    model: nn.Module | None,
    inputs: torch.Tensor,
    candidates: int,
    labeled: int,
    strategy: str,
    seed: int,
    device: torch.device | str | None,
) -> PickMore:
    """More picks with the round's own strategy and model: the candidates whose objects are gone
    taken out of the inputs, those already chosen counted as taken (a k-centre or TypiClust
    pick goes on from them, an uncertainty pick takes the next scores)."""

    def more(chosen: list[int], out: list[int], budget: int) -> svp.SelectionResult:
        dropped = set(out)
        keep = [i for i in range(candidates) if i not in dropped]
        position = {i: p for p, i in enumerate(keep)}
        rows = torch.cat([inputs[torch.tensor(keep)], inputs[candidates : candidates + labeled]])
        taken = [position[i] for i in chosen] + list(range(len(keep), len(keep) + labeled))
        picked = svp.select(model, rows, taken, budget, strategy, seed=seed + 1, device=device)
        return replace(picked, indices=[keep[i] for i in picked.indices])

    return more
