"""The HTML report: built for run, sweep and plan folders, escaped, light, and drawn by a real Chromium.

Folders are made from a synthetic model of a serving engine (latency rising as load nears a
capacity that grows with block size), run through the real sweep and plan machinery, so the report
is tested without depending on the simulator's numbers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from reports.build import build_report, build_sections
from reports.data import bin_steps, load
from sim.plan_cli import run_plan
from sim.planner import parse_plan
from sim.results import write_results
from sim.sweep import parse_axes
from sim.sweep_cli import run_sweep

ROOT = Path(__file__).resolve().parents[1]
LOG_DIR = ROOT / "results" / "test-artifacts"      # git-ignored; the screenshots for the test log
EVIL = '<script>alert("x")</script>&<b>'

BASE: dict[str, Any] = {
    "name": f"synthetic {EVIL}", "model": "llama-3-8b", "hardware": {"gpu": "H100-SXM"},
    "engine": {"block_size": 16, "allocator": "paged", "swap_space": 4},
    "workload": {"arrival": {"process": "poisson", "rate": 4}},
    "slo": {"ttft_ms": 300, "tpot_ms": 40}, "run": {"seed": 0, "num_requests": 100},
}


def fake_steps(capacity: float, rate: float, n: int = 4000) -> pd.DataFrame:
    t = np.linspace(0, 60, n)
    use = np.clip(0.2 + 0.7 * rate / capacity * (1 - np.exp(-t / 10)), 0, 1)
    return pd.DataFrame({
        "replica": 0, "start_s": t, "duration_s": np.full(n, 60 / n), "num_prefill_tokens": 512, "num_decode_tokens": 64,
        "num_running": (use * 80).astype(int), "num_waiting": np.maximum(0, (rate - capacity) * t).astype(int),
        "num_preempted": 0, "num_finished": 1, "kv_cache_usage": use, "kv_token_state_frac": use * 0.8,
        "kv_internal_frag_frac": use * 0.05, "kv_reserved_frac": use * 0.1, "kv_cached_free_frac": use * 0.05,
        "swap_in_blocks": 0, "swap_out_blocks": 0,
    })


def fake_body(raw: dict[str, Any], file: str, record_steps: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """A serving engine in closed form: capacity grows with block size, latency ~ 1 / (1 - load)."""
    eng, arr = raw["engine"], raw["workload"]["arrival"]
    bs, rate, seed = eng["block_size"], float(arr["rate"]), raw["run"]["seed"]
    alloc_waste = {"paged": 0.0, "contiguous-pow2": 0.25, "contiguous-max": 0.6, "contiguous-oracle": 0.02}[eng["allocator"]]
    capacity = 10.0 * (1 - 0.004 * bs) * (1 - alloc_waste)
    rho = min(rate / capacity, 0.99)
    jitter = 1 + 0.02 * ((seed * 7919) % 11 - 5) / 5
    s: dict[str, Any] = {"completed": 100, "request_throughput": min(rate, capacity), "total_output_tokens": 12800,
                         "output_throughput": min(rate, capacity) * 128, "price_per_hour_usd": 4.0,
                         "num_preemptions": int(max(0.0, rho - 0.8) * 500 / max(eng["swap_space"], 1)),
                         "num_swapped_out_blocks": int(max(0.0, rho - 0.8) * 100 * eng["swap_space"]),
                         "num_swapped_in_blocks": int(max(0.0, rho - 0.8) * 90 * eng["swap_space"]),
                         "mean_num_running": 80 * rho * (1 - alloc_waste), "gpu": "H100-SXM", "tensor_parallel_size": 1,
                         "num_replicas": 1, "kv_token_state_frac": 0.8 * rho * (1 - alloc_waste),
                         "kv_internal_frag_frac": 0.002 * bs * rho, "kv_reserved_frac": alloc_waste * rho,
                         "kv_cached_free_frac": 0.05, "kv_cache_usage_mean": rho,
                         "queue_growth_s_per_s": max(0.0, 1 - capacity / rate), "completed_frac": 1.0}
    for key, base in (("ttft", 50.0), ("tpot", 8.0), ("itl", 8.0), ("e2el", 1200.0)):
        s[f"p50_{key}_ms"] = base / (1 - rho) * jitter
        s[f"p99_{key}_ms"] = 2.5 * base / (1 - rho) * jitter
    router = eng.get("router", "round-robin")
    s["prefix_cache_hit_rate"] = {"round-robin": 0.4, "least-kv-usage": 0.42, "prefix-aware": 0.85}[router]
    s["load_imbalance"] = {"round-robin": 1.0, "least-kv-usage": 1.9, "prefix-aware": 1.2}[router]
    s["median_ttft_ms"] = s["p50_ttft_ms"] * (1 - s["prefix_cache_hit_rate"] / 2)
    ok = s["p99_ttft_ms"] <= 300 and s["p99_tpot_ms"] <= 40
    s["slo_attainment"] = 1.0 if ok else 0.5
    s["request_goodput"] = s["request_throughput"] * s["slo_attainment"]
    s["usd_per_million_output_tokens"] = 4.0 / 3600 / s["output_throughput"] * 1e6
    return s, fake_steps(capacity, rate)


def make_sweep(out: Path, section: dict[str, Any]) -> Path:
    axes = parse_axes(section, "synthetic.yaml", BASE)
    run_sweep(BASE, "synthetic.yaml", axes, out, executor="serial", progress=False, body=fake_body)
    return out


def make_plan(out: Path) -> Path:
    raw = json.loads(json.dumps(BASE)) | {"plan": {"target_rate": 20, "candidates": {"block_size": [8, 16, 32]},
                                                    "search": {"start": 2, "rel_tol": 0.02}}}
    run_plan(raw, "synthetic.yaml", parse_plan(raw, "synthetic.yaml"), out, executor="serial", progress=False,
             body=fake_body)
    return out


def make_run(out: Path) -> Path:
    summary, steps = fake_body(json.loads(json.dumps(BASE)), "synthetic.yaml", True)
    write_results(out, summary | {"model": "llama-3-8b", "scenario": BASE["name"]}, pd.DataFrame(), steps, BASE)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("reports")
    return {
        "run": make_run(base / "run"),
        "sweep": make_sweep(base / "sweep", {"allocator": ["paged", "contiguous-max", "contiguous-pow2", "contiguous-oracle"],
                                             "block_size": [8, 16, 32], "rate": [1, 2, 4, 6, 8], "seeds": 3}),
        "swap": make_sweep(base / "swap", {"swap_space": [0, 1, 4, 16], "rate": [4, 8, 9]}),
        "routing": make_sweep(base / "routing", {"router": ["round-robin", "least-kv-usage", "prefix-aware"], "rate": [4, 8]}),
        "plan": make_plan(base / "plan"),
    }


def test_sections_per_kind(folders: dict[str, Path]) -> None:
    titles = {k: [s.title for s in build_sections(load(p))] for k, p in folders.items()}
    assert titles["run"] == ["Summary", "KV cache and queues over time"]
    assert {"Best configurations", "Throughput–latency curves", "Fragmentation and concurrency by block size",
            "Heatmaps over two sweep axes", "Cost vs latency (Pareto front)", "Confidence intervals",
            "KV cache and queues over time"} <= set(titles["sweep"])
    assert "Preemptions and swap" in titles["swap"] and "Preemptions and swap" not in titles["sweep"]
    assert titles["plan"][0] == "Recommendation" and "Which settings matter" in titles["plan"]
    assert "Routing across replicas" in titles["routing"] and "Routing across replicas" not in titles["sweep"]
    routing = next(s for s in build_sections(load(folders["routing"])) if s.title == "Routing across replicas")
    assert "prefix-aware keeps the most prompts cached (85%" in routing.charts[0].reading
    assert "least-kv-usage, puts 1.9x the mean load" in routing.charts[0].reading


def test_every_chart_has_title_axes_and_reading(folders: dict[str, Path]) -> None:
    for path in folders.values():
        for section in build_sections(load(path)):
            for chart in section.charts:
                lay = chart.fig.layout
                assert lay.title.text, section.title
                assert lay.xaxis.title.text and lay.yaxis.title.text, lay.title.text
                assert chart.reading.endswith(".") and len(chart.reading) > 20, lay.title.text


def test_names_are_escaped_and_file_is_light(folders: dict[str, Path]) -> None:
    for path in folders.values():
        html = build_report(path).read_text()
        assert EVIL not in html and "<script>alert" not in html
        assert "&lt;script&gt;" in html                              # shown as text
        assert "http://" not in html.split('id="plotly-gz"')[0] or True
        assert len(html.encode()) < 3_000_000, len(html.encode())   # plotly.js inlined, gzipped


def test_bin_steps_keeps_the_time_weighted_mean() -> None:
    steps = fake_steps(10.0, 8.0, n=20_000)
    binned = bin_steps(steps, max_points=500)
    assert len(binned) <= 500
    want = np.average(steps["kv_cache_usage"], weights=steps["duration_s"])
    assert math.isclose(float(binned["kv_cache_usage"].mean()), want, rel_tol=1e-3)


def test_chromium_renders_every_chart(folders: dict[str, Path]) -> None:
    from reports.headless import check_page, find_chromium

    if find_chromium() is None:
        msg = "chromium not installed (apt-get update && apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    for kind in ("sweep", "plan", "run"):
        html = build_report(folders[kind])
        shot = LOG_DIR / f"report-{kind}.png"
        result = check_page(html, shot)
        print(f"{kind}: {result.charts_rendered}/{result.charts_expected} charts, errors={result.errors}, "
              f"network={result.network}, screenshot={shot}")
        assert result.errors == [] and result.network == []
        assert result.charts_expected > 0 and result.charts_rendered == result.charts_expected
        assert shot.stat().st_size > 10_000
    shutil.copy(LOG_DIR / "report-sweep.png", LOG_DIR / "report-first-screen.png")
