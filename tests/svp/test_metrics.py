"""Metrics: ranks with ties, Spearman, overlap, accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from svp import (
    accuracy,
    overlap,
    rankdata,
    spearman,
)


def test_rankdata_averages_ties_and_spearman_agrees_with_definition() -> None:
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    a = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    b = np.array([2.0, 7.0, 1.0, 8.0, 2.0, 8.0, 1.0, 8.0])
    ra, rb = rankdata(a), rankdata(b)
    expected = np.corrcoef(ra, rb)[0, 1]
    assert spearman(a, b) == pytest.approx(expected)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_overlap_and_accuracy() -> None:
    assert overlap([1, 2, 3, 4], [3, 4, 5, 6]) == 0.5
    assert accuracy(
        torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
    ) == pytest.approx(2 / 3)
