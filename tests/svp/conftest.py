"""The engine's tests need no database: keep them independent of the service's fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two shared cores: more threads than that only adds contention.
    torch.set_num_threads(min(2, torch.get_num_threads()))
