"""Synthetic workloads: arrival processes against their theory, length distributions, determinism,
and one-line config errors."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.errors import ScenarioError
from sim.lengths import LengthConfig, sample_lengths
from sim.requests_table import RequestTable
from sim.schema import Ctx, build
from sim.workload import SHARED_PREFIX_ID_BASE, WorkloadConfig, generate

CTX = Ctx("scenario.yaml", "workload")


def make(raw: dict[str, Any]) -> WorkloadConfig:
    return build(WorkloadConfig, raw, CTX)


def run(raw: dict[str, Any], num_requests: int | None = None, duration_s: float | None = None,
        seed: int = 0) -> RequestTable:
    return generate(make(raw), num_requests=num_requests, duration_s=duration_s,
                    rng=np.random.default_rng(seed), ctx=CTX)


def gaps_of(table: RequestTable) -> np.ndarray:
    """Inter-arrival gaps, counting the first request's gap from t=0 (as vLLM sends it)."""
    return np.diff(np.concatenate(([0.0], table.arrival_s)))


# --- arrivals -------------------------------------------------------------------------------------

N_BIG = 200_000


def test_poisson_gaps_have_mean_one_over_rate_and_cv_one() -> None:
    rate = 5.0
    t = run({"arrival": {"process": "poisson", "rate": rate, "normalize": False}}, N_BIG)
    g = gaps_of(t)
    # CLT: the mean of N exponential gaps has sd (1/rate)/sqrt(N); allow 5 sd.
    assert abs(g.mean() - 1 / rate) < 5 * (1 / rate) / math.sqrt(N_BIG)
    # sample CV of exponential data has sd ~ sqrt(2/N) ~ 0.003
    assert abs(g.std() / g.mean() - 1.0) < 0.02


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_gamma_cv_is_one_over_sqrt_burstiness(burstiness: float) -> None:
    rate = 3.0
    t = run({"arrival": {"process": "gamma", "rate": rate, "burstiness": burstiness, "normalize": False}}, N_BIG)
    g = gaps_of(t)
    cv = 1 / math.sqrt(burstiness)
    assert abs(g.mean() - 1 / rate) < 5 * cv * (1 / rate) / math.sqrt(N_BIG)
    assert abs(g.std() / g.mean() - cv) < 0.03 * cv + 0.01


def test_normalize_puts_last_arrival_at_n_over_rate_like_vllm() -> None:
    t = run({"arrival": {"process": "gamma", "rate": 2.0, "burstiness": 0.5}}, 1000)
    assert t.arrival_s[-1] == pytest.approx(1000 / 2.0, rel=1e-12)
    assert np.all(np.diff(t.arrival_s) >= 0)


def test_constant_rate_is_exact() -> None:
    t = run({"arrival": {"process": "constant", "rate": 4.0}}, 10)
    np.testing.assert_allclose(t.arrival_s, np.arange(1, 11) / 4.0, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rate", ["inf", float("inf")])
def test_infinite_rate_sends_all_at_zero(rate: Any) -> None:
    t = run({"arrival": {"rate": rate, "max_concurrency": 16}}, 50)
    assert np.array_equal(t.arrival_s, np.zeros(50))
    assert t.max_concurrency == 16


def test_request_rate_alias() -> None:
    assert make({"arrival": {"request_rate": 7}}).arrival.rate_rps == 7.0


def test_duration_bounds_the_workload() -> None:
    t = run({"arrival": {"process": "poisson", "rate": 10.0}}, duration_s=60.0)
    assert len(t) == 600 and t.arrival_s[-1] <= 60.0   # vLLM-style: exactly rate*duration requests
    t = run({"arrival": {"process": "poisson", "rate": 10.0, "normalize": False}}, duration_s=1000.0)
    assert t.arrival_s[-1] <= 1000.0
    assert abs(len(t) - 10_000) < 5 * math.sqrt(10_000)  # Poisson count, sd = sqrt(mean)
    t = run({"arrival": {"process": "constant", "rate": 1.0}}, num_requests=100, duration_s=10.0)
    assert len(t) == 10


def test_same_seed_same_arrays_different_seed_different() -> None:
    raw = {"arrival": {"process": "gamma", "rate": 3.0, "burstiness": 0.7},
           "lengths": {"input": {"dist": "lognormal", "mean": 800, "sigma": 0.8},
                       "output": {"dist": "random", "len": 200, "range_ratio": 0.5}},
           "shared_prefix": {"tokens": 64, "num_prefixes": 3, "assign": "random"}}
    a, b, c = run(raw, 5000, seed=7), run(raw, 5000, seed=7), run(raw, 5000, seed=8)
    for col in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
        assert not np.array_equal(getattr(a, col), getattr(c, col))
    assert a.segments == b.segments


# --- lengths --------------------------------------------------------------------------------------

def draw(raw: dict[str, Any], count: int = 100_000, seed: int = 1) -> np.ndarray:
    ctx = Ctx("scenario.yaml", "workload.lengths.input")
    return sample_lengths(build(LengthConfig, raw, ctx), count, np.random.default_rng(seed), ctx, "input")


def test_lognormal_median_and_mean() -> None:
    x = draw({"dist": "lognormal", "median": 500, "sigma": 1.0})
    # sample median sd = m*sigma*sqrt(2*pi)/(2*sqrt(N)) ~ 2 tokens; rounding adds <= 0.5
    assert abs(np.median(x) - 500) < 12
    y = draw({"dist": "lognormal", "mean": 300, "sigma": 0.5})
    sd = 300 * math.sqrt(math.exp(0.25) - 1)
    assert abs(y.mean() - 300) < 5 * sd / math.sqrt(y.size) + 0.5


def test_vllm_random_dataset_range() -> None:
    x = draw({"dist": "random", "len": 100, "range_ratio": 0.5})
    assert x.min() == 50 and x.max() == 150 and len(np.unique(x)) == 101
    assert np.all(draw({"dist": "random", "len": 37}, 100) == 37)


def test_fixed_uniform_and_clamps() -> None:
    assert np.all(draw({"dist": "fixed", "value": 9}, 10) == 9)
    u = draw({"dist": "uniform", "low": 3, "high": 5})
    assert set(np.unique(u)) == {3, 4, 5}
    c = draw({"dist": "lognormal", "median": 100, "sigma": 2.0, "min": 20, "max": 400})
    assert c.min() == 20 and c.max() == 400
    assert draw({"dist": "lognormal", "median": 1, "sigma": 3.0}).min() >= 1


def test_empirical_resamples_a_trace_column(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("arrival_s,input_tokens,output_tokens\n0,10,1\n1,20,2\n2,30,3\n")
    x = draw({"dist": "empirical", "path": str(f)}, 3000)
    assert set(np.unique(x)) == {10, 20, 30}
    y = draw({"dist": "empirical", "path": str(f), "column": "output"}, 3000)
    assert set(np.unique(y)) == {1, 2, 3}


def test_default_lengths_are_vllm_random_defaults_and_n() -> None:
    t = run({"arrival": {"rate": 1.0}, "n": 4}, 20)
    assert np.all(t.prompt_tokens == 1024) and np.all(t.output_tokens == 128)
    assert t.n is not None and np.all(t.n == 4)


def test_shared_prefix_adds_tokens_and_one_leading_segment() -> None:
    raw = {"arrival": {"rate": 1.0}, "lengths": {"input": {"dist": "fixed", "value": 100}},
           "shared_prefix": {"tokens": 256, "num_prefixes": 2}}
    t = run(raw, 5)
    assert np.all(t.prompt_tokens == 356)
    assert t.segments == [((SHARED_PREFIX_ID_BASE + i % 2, 256),) for i in range(5)]
    t.check()


def test_config_from_num_requests_field() -> None:
    assert len(run({"arrival": {"rate": 2.0}, "num_requests": 33})) == 33
    assert len(run({"arrival": {"rate": 2.0}, "num_requests": 33}, num_requests=5)) == 5


# --- errors ---------------------------------------------------------------------------------------

BAD: list[tuple[dict[str, Any], str]] = [
    ({"arival": {}}, "workload.arival"),
    ({"arrival": {"process": "poisson"}}, "workload.arrival.rate"),
    ({"arrival": {"rate": "fast"}}, "workload.arrival.rate"),
    ({"arrival": {"rate": -1}}, "workload.arrival.rate"),
    ({"arrival": {"rate": 1, "burstiness": 0.5}}, "workload.arrival.burstiness"),
    ({"arrival": {"process": "gamma", "rate": 1, "burstiness": 0}}, "workload.arrival.burstiness"),
    ({"arrival": {"process": "bursty", "rate": 1}}, "workload.arrival.process"),
    ({"arrival": {"process": "trace"}}, "workload.trace.path"),
    ({"arrival": {"rate": 1}, "lengths": {"input": {"dist": "random", "len": 10, "range_ratio": 1.0}}},
     "workload.lengths.input.range_ratio"),
    ({"arrival": {"rate": 1}, "lengths": {"input": {"dist": "lognormal", "median": 5, "mean": 5, "sigma": 1}}},
     "workload.lengths.input.median"),
    ({"arrival": {"rate": 1}, "lengths": {"output": {"dist": "fixed", "value": 5, "sigma": 1}}},
     "workload.lengths.output.sigma"),
    ({"arrival": {"rate": 1}, "lengths": {"output": {"dist": "uniform", "low": 5}}},
     "workload.lengths.output.high"),
    ({"arrival": {"rate": 1}, "lengths": {"output": {"dist": "fixed", "value": 5, "min": 9, "max": 3}}},
     "workload.lengths.output.max"),
    ({"arrival": {"rate": 1}, "trace": {"path": "x.csv"}, "lengths": {"output": {"dist": "fixed", "value": 3}}},
     "workload.lengths"),
    ({"arrival": {"rate": 1}, "trace": {"format": "azure"}}, "workload.trace.path"),
    ({"arrival": {"rate": 1}, "trace": {"path": "x.csv", "time_scale": 0}}, "workload.trace.time_scale"),
    ({"arrival": {"process": "trace", "rate": 2}, "trace": {"path": "x.csv", "time_scale": 2}}, "workload.trace.time_scale"),
    ({"arrival": {"rate": 1}, "trace": {"path": "x.csv", "use_lengths": False}}, "workload.trace"),
    ({"arrival": {"rate": 1}, "n": 0}, "workload.n"),
    ({"arrival": {"rate": 1}, "shared_prefix": {"tokens": 5, "num_prefixes": 0}}, "workload.shared_prefix.num_prefixes"),
]


@pytest.mark.parametrize(("raw", "key"), BAD)
def test_bad_config_is_one_line_naming_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        make(raw)
    msg = str(e.value)
    assert "\n" not in msg and key in msg and msg.startswith("scenario.yaml: ")


def test_unbounded_workload_is_an_error() -> None:
    with pytest.raises(ScenarioError, match="workload.arrival"):
        run({"arrival": {"rate": 1.0}})
    with pytest.raises(ScenarioError, match="workload.arrival.rate"):
        run({"arrival": {"rate": "inf"}}, duration_s=10.0)


def test_a_table_whose_segments_outrun_a_request_is_refused() -> None:
    # request 1 holds 10 + 3 tokens; its runs name 8 + 6 = 14
    t = RequestTable(np.array([0.0, 1.0]), np.array([5, 10]), np.array([1, 3]),
                     segments=[((1, 6),), ((1, 8), (2, 6))])
    with pytest.raises(ValueError, match="request 1: segments are longer"):
        t.check()
    RequestTable(t.arrival_s, t.prompt_tokens, t.output_tokens, segments=[((1, 6),), ((1, 8), (2, 5))]).check()
