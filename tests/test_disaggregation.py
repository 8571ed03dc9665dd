"""Prefill/decode disaggregation: transfer time and layouts by hand, one request's timeline by
hand through both pools, selective disaggregation, and the co-located vs P/D trade-off."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.config import load_scenario
from sim.disaggregation import DisaggregationConfig, transfer_time_s
from sim.errors import ScenarioError
from sim.runner import run_scenario
from sim.schema import Ctx

KV_PER_TOKEN = 2 * 8 * 128 * 32 * 2            # Llama-3-8B, bf16: K and V x 8 KV heads x 128 x 32 layers x 2 bytes


def test_transfer_time_by_hand() -> None:
    cfg = DisaggregationConfig(prefill_replicas=1, link="infiniband")
    assert transfer_time_s(cfg, 1000, KV_PER_TOKEN) == pytest.approx(20e-6 + 1000 * KV_PER_TOKEN / 50e9)
    own = DisaggregationConfig(prefill_replicas=1, bandwidth_bytes_per_s=1e9, latency_s=0.001)
    assert transfer_time_s(own, 100, KV_PER_TOKEN) == pytest.approx(0.001 + 100 * KV_PER_TOKEN / 1e9)


def _scenario(tmp_path: Path, engine: str, workload: str = "", run: str = "num_requests: 1") -> Path:
    p = tmp_path / "pd.yaml"
    p.write_text(f"""
name: pd
model: llama-3-8b
hardware: {{gpu: H100-SXM, constant_step_s: 0.01}}
engine: {{async_scheduling: false, {engine}}}
workload:
  arrival: {{process: poisson, rate: 1}}
  lengths: {{input: {{dist: fixed, value: 1000}}, output: {{dist: fixed, value: 10}}}}
  {workload}
run: {{seed: 0, {run}}}
""")
    return p


def test_one_request_through_both_pools_by_hand(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "num_replicas: 1, disaggregation: {prefill_replicas: 1, bandwidth_bytes_per_s: 1.0e+9, latency_s: 0}")
    r = run_scenario(load_scenario(p))
    s, req = r.summary, r.requests.iloc[0]
    transfer = 1000 * KV_PER_TOKEN / 1e9                       # 0.131 s
    # prefill step 0.01 s -> transfer -> the decode replica's first step samples token 1 (0.01 s),
    # then 9 more decode steps
    assert req["ttft_s"] == pytest.approx(0.01 + transfer + 0.01)
    assert req["e2el_s"] == pytest.approx(0.01 + transfer + 10 * 0.01)
    assert s["num_disaggregated"] == 1 and s["mean_kv_transfer_ms"] == pytest.approx(transfer * 1000)
    assert s["completed"] == 1 and s["total_output_tokens"] == 10
    steps = r.steps
    assert set(steps["replica"]) == {0, 1}                    # decode replica 0, prefill replica 1
    assert steps[steps["replica"] == 1]["num_prefill_tokens"].sum() == 1000
    assert steps[steps["replica"] == 0]["num_prefill_tokens"].sum() == 0   # only the last prompt token, as a decode
    from sim.hardware import load_hardware
    assert s["price_per_hour_usd"] == pytest.approx(2 * load_hardware("H100-SXM", {}, Ctx("test")).price_per_hour_usd)


def test_selective_disaggregation_sends_only_long_prompts(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "num_replicas: 2, disaggregation: {prefill_replicas: 1, threshold_tokens: 500}",
                  workload="", run="num_requests: 40")
    p.write_text(p.read_text().replace("{dist: fixed, value: 1000}", "{dist: uniform, low: 100, high: 1000}"))
    r = run_scenario(load_scenario(p))
    long_prompts = int((r.workload.prompt_tokens > 500).sum())
    assert 0 < r.summary["num_disaggregated"] == long_prompts < 40
    assert r.summary["completed"] == 40


def test_pd_layout_sets_both_pools_and_bad_layouts_fail_in_one_line(tmp_path: Path) -> None:
    sc = load_scenario(_scenario(tmp_path, "pd_layout: 1P3D"))
    assert sc.engine.num_replicas == 3 and sc.engine.disaggregation.prefill_replicas == 1
    sc = load_scenario(_scenario(tmp_path, "pd_layout: 4c, disaggregation: {prefill_replicas: 2}"))
    assert sc.engine.num_replicas == 4 and not sc.engine.disaggregation.enabled
    for bad in ("0P3D", "2X", "P3D"):
        with pytest.raises(ScenarioError) as e:
            load_scenario(_scenario(tmp_path, f"pd_layout: {bad}"))
        assert "engine.pd_layout" in str(e.value) and "\n" not in str(e.value)


def test_disaggregation_refuses_what_it_does_not_simulate(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="workload.n"):
        load_scenario(_scenario(tmp_path, "disaggregation: {prefill_replicas: 1}", workload="n: 2"))
    with pytest.raises(ScenarioError, match="engine.disaggregation"):
        load_scenario(_scenario(tmp_path, "disaggregation: {prefill_replicas: 1}, allocator: contiguous-max"))
    with pytest.raises(ScenarioError, match="engine.disaggregation.link"):
        load_scenario(_scenario(tmp_path, "disaggregation: {prefill_replicas: 1, link: carrier-pigeon}"))


def test_decode_only_replicas_decode_more_steadily(tmp_path: Path) -> None:
    """Long prompts at equal GPU count: P/D removes prefill interference from decoding (lower TPOT
    p99) and pays for it in TTFT (a prefill queue plus a transfer)."""
    p = tmp_path / "trade.yaml"
    text = """
name: trade
model: llama-3-8b
hardware: {gpu: H100-SXM}
engine: {router: least-outstanding-tokens, disaggregation: {link: infiniband}, pd_layout: LAYOUT}
workload:
  arrival: {process: poisson, rate: 10}
  lengths: {input: {dist: lognormal, median: 3000, sigma: 0.5, max: 7000}, output: {dist: lognormal, median: 250, sigma: 0.6, max: 1000}}
run: {seed: 0, num_requests: 800}
"""
    p.write_text(text.replace("LAYOUT", "4C"))
    co = run_scenario(load_scenario(p)).summary
    p.write_text(text.replace("LAYOUT", "2P2D"))
    pd_ = run_scenario(load_scenario(p)).summary
    assert pd_["p99_tpot_ms"] < 0.9 * co["p99_tpot_ms"]
    assert pd_["median_ttft_ms"] > co["median_ttft_ms"]
    assert pd_["price_per_hour_usd"] == pytest.approx(co["price_per_hour_usd"])     # equal GPU count
