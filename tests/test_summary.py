"""Summary statistics: weighted percentiles equal numpy's on the expanded sample."""

from __future__ import annotations

import numpy as np
import pytest

from sim.summary import _num_distinct, weighted_percentile, weighted_percentiles


@pytest.mark.parametrize("seed", range(5))
def test_weighted_percentiles_match_numpy_on_the_repeated_sample(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    values = rng.choice(rng.normal(size=20), size=n)          # ties included
    weights = rng.integers(1, 5, size=n)
    qs = [0.0, 12.5, 50.0, 90.0, 99.0, 100.0]
    expanded = np.repeat(values, weights)
    got = weighted_percentiles(values, weights, qs)
    assert got == pytest.approx([float(np.percentile(expanded, q)) for q in qs], rel=1e-12, abs=1e-12)
    assert [weighted_percentile(values, weights, q) for q in qs] == got


@pytest.mark.parametrize(("ids", "expect"), [
    ([], 0), ([3, 3, 3], 1), ([0, 5, 2, 5, 0, 9], 4),        # small non-negative: counted in a bincount
    ([-1, 2, 2, -1, 7], 3), ([1 << 40, 3, 1 << 40], 2),       # negative or huge: by np.unique
])
def test_distinct_ids_by_hand(ids: list[int], expect: int) -> None:
    assert _num_distinct(np.array(ids, dtype=np.int64)) == expect

