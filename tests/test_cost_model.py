"""sim.cost_model: the linear-layer table's interpolation, by hand, and its memo."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sim.cost_model import CostProfile


def _profile(seconds: tuple[float, float]) -> CostProfile:
    return CostProfile("calibrated", "H100-SXM", "m", linear_tokens=(1.0, 100.0), linear_seconds=seconds)


def test_linear_table_interpolates_and_extrapolates_the_last_segment():
    p = _profile((1e-3, 1e-2))
    assert p.linear_s(1) == pytest.approx(1e-3)
    assert p.linear_s(50) == pytest.approx(1e-3 + 9e-3 * 49 / 99)
    assert p.linear_s(200) == pytest.approx(1e-3 + 9e-3 * 199 / 99)     # past the table: the line goes on
    assert p.linear_s(50) == p.linear_s(50)                             # again, from the memo: the same float


def test_a_replaced_profile_does_not_share_the_memo():
    # dataclasses.replace() with other linear seconds must not answer from the original's memo
    p = _profile((1e-3, 1e-2))
    assert p.linear_s(50) == pytest.approx(1e-3 + 9e-3 * 49 / 99)
    q = replace(p, linear_seconds=(2e-3, 2e-2))
    assert q.linear_s(50) == pytest.approx(2 * (1e-3 + 9e-3 * 49 / 99))
    assert p == replace(p)                                              # the memo is not compared
