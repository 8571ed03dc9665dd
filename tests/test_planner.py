"""The planner against truths computed by hand: the knee of a monotone latency model, replica counts,
the preemption cliff, ranking and sensitivity, and a whole plan on a closed-form engine."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from sim.errors import ScenarioError
from sim.plan_cli import run_plan
from sim.planner import (
    PlanSpec,
    Probe,
    check_slo,
    find_cliff,
    find_sustainable,
    parse_plan,
    rank,
    replicas_needed,
    sensitivity,
)
from sim.sweep import Axis


def spec(**kw: Any) -> PlanSpec:
    base: dict[str, Any] = {"target_rate": 20.0, "slo_ms": {"ttft_ms": 50.0}, "start_rps": 1.0, "rel_tol": 0.01}
    return PlanSpec(**(base | kw))


def knee_model(capacity: float) -> Any:
    """p99 TTFT = 100 / (capacity - rate) ms: with a 50 ms SLO the knee is exactly capacity - 2."""
    def evaluate(rate: float) -> Probe:
        p99 = 100.0 / (capacity - rate) if rate < capacity else math.inf
        m = {"p99_ttft_ms": p99, "completed": 100}
        return Probe(rate, not check_slo(m, spec()), check_slo(m, spec()), m)
    return evaluate


@pytest.mark.parametrize("start", [1.0, 7.9, 8.1, 30.0])
def test_search_finds_the_hand_computed_knee(start: float) -> None:
    res = find_sustainable(knee_model(10.0), spec(start_rps=start))
    assert 8.0 / 1.01 <= res.sustainable_rps <= 8.0          # knee = 10 - 100/50 = 8 req/s
    assert not res.capped
    assert all(p.ok == (p.rate_rps <= 8.0) for p in res.probes)
    assert len(res.probes) <= 12                             # bracketing + bisection: logarithmic


def test_search_bounds() -> None:
    assert find_sustainable(knee_model(1.0), spec(low_rps=0.25)).sustainable_rps == 0.0   # knee at -1: nothing passes
    capped = find_sustainable(knee_model(1e6), spec(high_rps=64.0))
    assert capped.capped and capped.sustainable_rps == 64.0


@pytest.mark.parametrize(("target", "capacity", "margin", "want"), [
    (100.0, 30.0, 1.2, 4),      # 100 * 1.2 / 30 = 4.0 exactly: 4, not 5
    (100.0, 30.0, 1.0, 4),      # 3.33 -> 4
    (90.0, 30.0, 1.0, 3),       # exactly 3
    (0.3, 0.1, 1.0, 3),         # 0.3 / 0.1 = 2.9999999999999996 in floats: still 3
    (1.0, 50.0, 1.5, 1),        # at least one
])
def test_replicas_needed_is_ceil_of_target_times_margin_over_capacity(target: float, capacity: float,
                                                                       margin: float, want: int) -> None:
    assert replicas_needed(target, capacity, margin) == want
    assert replicas_needed(target, 0.0, margin) is None


def test_check_slo_names_every_miss() -> None:
    s = spec(slo_ms={"ttft_ms": 100.0, "tpot_ms": 20.0}, goodput=0.99, max_queue_growth=0.05)
    m = {"p99_ttft_ms": 150.0, "p99_tpot_ms": 10.0, "slo_attainment": 0.9, "queue_growth_s_per_s": 0.2,
         "completed_frac": 0.95}
    why = check_slo(m, s)
    assert len(why) == 4 and why[0].startswith("p99 TTFT 150.0 ms > 100 ms")
    assert check_slo({"p99_ttft_ms": 99.0, "p99_tpot_ms": 19.0, "slo_attainment": 1.0}, s) == []


def test_cliff_is_where_preemptions_and_latency_rise_together() -> None:
    rows = [(2, 0, 100), (4, 0, 120), (5, 1, 130), (6, 40, 400), (8, 300, 2000)]   # rate, preemptions, p99 e2el
    probes = [Probe(r, True, [], {"completed": 100, "num_preemptions": n, "p99_e2el_ms": lat}) for r, n, lat in rows]
    assert find_cliff(probes, min_preemptions=0.02) == (5, 6)
    flat = [Probe(r, True, [], {"completed": 100, "num_preemptions": 50, "p99_e2el_ms": 100}) for r in (1, 2, 3)]
    assert find_cliff(flat, 0.02) is None       # preemptions present but neither rising: no cascade


def test_rank_and_sensitivity() -> None:
    axes = [Axis("block_size", "engine.block_size", (8, 16, 32)), Axis("hardware", "hardware.gpu", ("A", "B"))]
    rows = [{"block_size": b, "hardware": h, "capacity_rps": c, "replicas": r, "hourly_cost_usd": (r or 0) * p,
             "usd_per_million_output_tokens": (r or 0) * p / 10}
            for b, h, c, r, p in [(8, "A", 5.0, 5, 2.0), (16, "A", 8.0, 3, 2.0), (32, "A", 6.0, 4, 2.0),
                                  (8, "B", 9.0, 3, 5.0), (16, "B", 10.0, 3, 5.0), (32, "B", 1.0, None, 5.0)]]
    rows[-1]["hourly_cost_usd"] = None
    ranked = rank(rows)
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5, 6]
    best = ranked[0]
    assert (best["block_size"], best["hardware"]) == (16, "A") and ranked[-1]["replicas"] is None
    sens = sensitivity(ranked, best, axes)
    moves = {(s["axis"], s["to"]): s["delta_capacity_pct"] for s in sens}
    assert moves == {("block_size", 8): pytest.approx(-37.5), ("block_size", 32): pytest.approx(-25.0),
                     ("hardware", "B"): pytest.approx(25.0)}
    assert sens[0]["axis"] == "block_size" and sens[0]["to"] == 8      # largest change first


def test_parse_plan_errors_name_the_key() -> None:
    raw: dict[str, Any] = {"slo": {"ttft_ms": 100}, "plan": {}}
    with pytest.raises(ScenarioError, match=r"^p\.yaml: plan\.target_rate: required"):
        parse_plan(raw, "p.yaml")
    with pytest.raises(ScenarioError, match=r"plan\.tagret_rate: unknown key"):
        parse_plan({"slo": {"ttft_ms": 100}, "plan": {"tagret_rate": 3}}, "p.yaml")
    with pytest.raises(ScenarioError, match=r"plan\.candidates\.rate: the planner searches the rate"):
        parse_plan({"slo": {"ttft_ms": 100}, "plan": {"target_rate": 3, "candidates": {"rate": [1, 2]}}}, "p.yaml")
    with pytest.raises(ScenarioError, match=r"plan\.candidates\.block_size: expected a non-empty list"):
        parse_plan({"slo": {"ttft_ms": 100}, "plan": {"target_rate": 3, "candidates": {"block_size": []}}}, "p.yaml")
    ok = parse_plan({"slo": {"ttft_ms": 100}, "run": {"seed": 7}, "plan": {"target_rate": 3, "seeds": 2}}, "p.yaml")
    assert ok.seeds == (7, 8) and ok.percentile == "p99"


CAPACITY = {16: 10.0, 32: 6.0}


def closed_form(raw: dict[str, Any], file: str, record_steps: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """An engine whose p99 TTFT is 100 / (capacity - rate) ms; it preempts above 90% of capacity."""
    cap, rate = CAPACITY[raw["engine"]["block_size"]], float(raw["workload"]["arrival"]["rate"])
    rho = rate / cap
    s = {"p99_ttft_ms": 100.0 / (cap - rate) if rate < cap else 1e9, "completed": 100, "total_output_tokens": 10_000,
         "num_preemptions": int(max(0.0, rho - 0.9) * 1000), "p99_e2el_ms": 1000 / max(1e-6, 1 - rho),
         "price_per_hour_usd": 3.0, "gpu": "H100-SXM", "tensor_parallel_size": 1, "num_replicas": 1}
    return s, pd.DataFrame({"replica": [0], "start_s": [0.0], "duration_s": [1.0], "kv_cache_usage": [rho]})


def test_plan_recommends_the_cheapest_with_hand_computed_replicas(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "name": "closed-form", "model": "llama-3-8b", "engine": {"block_size": 16},
        "workload": {"arrival": {"process": "poisson", "rate": 2}}, "slo": {"ttft_ms": 50},
        "plan": {"target_rate": 20, "margin": 1.25, "candidates": {"block_size": [16, 32]},
                 "search": {"rel_tol": 0.001}},
    }
    plan = run_plan(raw, "cf.yaml", parse_plan(raw, "cf.yaml"), tmp_path, executor="serial", progress=False,
                    body=closed_form)
    best = plan["recommendation"]
    # knees: 16 -> 10 - 2 = 8 req/s, 32 -> 6 - 2 = 4 req/s; replicas ceil(20 * 1.25 / knee) = 4 and 7
    assert best["block_size"] == 16 and best["replicas"] == 4
    assert best["sustainable_rps"] == pytest.approx(8.0, rel=0.002)
    assert best["hourly_cost_usd"] == pytest.approx(12.0)
    # $12/h for 20 req/s x 100 tokens/request = 7.2 M tokens/h -> $1.667 per million
    assert best["usd_per_million_output_tokens"] == pytest.approx(12.0 / 7.2)
    cands = pd.read_parquet(tmp_path / "candidates.parquet")
    assert list(cands["replicas"]) == [4, 7]
    assert (tmp_path / "recommended" / "steps.parquet").exists()
    assert json.loads((tmp_path / "plan.json").read_text())["recommendation_text"].startswith("Run 4 replica(s)")
    # the cascade (preemptions above 90% of capacity) starts above the knee: stated, capacity unchanged
    assert best["cliff_rps"] is not None and best["cliff_rps"] > best["sustainable_rps"]
    assert plan["warnings"] and "preemption cascade" in plan["warnings"][0]
    assert plan["sensitivity"][0]["axis"] == "block_size"
    assert plan["sensitivity"][0]["delta_capacity_pct"] == pytest.approx(-50.0, abs=0.5)
