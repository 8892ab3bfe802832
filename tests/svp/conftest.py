"""The engine's tests need no database: keep them independent of the service's fixtures."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every engine test is database-free: scripts/test runs them once, not per back end."""
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.database_free)


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Two shared cores: more threads than that only adds contention.
    torch.set_num_threads(min(2, torch.get_num_threads()))
