"""`pagesim run` end to end: the results folder, one-line errors, bit-for-bit reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = str(ROOT / "scenarios" / "small.yaml")


def run(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    assert main(["run", SMALL, "--out", str(out), "--no-report", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_results_folder_and_vllm_bench_keys(tmp_path):
    s = run(tmp_path, "a")
    for key in ("completed", "request_throughput", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "request_goodput",
                "num_gpu_blocks", "num_cpu_blocks", "num_preemptions", "mean_queue_delay_ms", "kv_cache_usage_mean",
                "prefix_cache_hit_rate", "kv_token_state_frac", "kv_internal_frag_frac", "kv_reserved_frac",
                "kv_cached_free_frac"):
        assert key in s, key
    assert s["completed"] == 200
    out = tmp_path / "a"
    req = pd.read_parquet(out / "requests.parquet")
    steps = pd.read_parquet(out / "steps.parquet")
    assert len(req) == 200 and (req.ttft_s > 0).all() and len(steps) == s["num_steps"]
    assert (out / "scenario.yaml").exists()
    # fractions of KV memory are fractions
    for k in ("kv_token_state_frac", "kv_internal_frag_frac", "kv_cached_free_frac"):
        assert 0.0 <= s[k] <= 1.0


def test_same_seed_same_summary_bit_for_bit(tmp_path):
    a, b = run(tmp_path, "a"), run(tmp_path, "b")
    a.pop("wall_time_s")
    b.pop("wall_time_s")
    assert a == b
    c = run(tmp_path, "c", "--set", "run.seed=2")
    assert c["mean_ttft_ms"] != a["mean_ttft_ms"]


def test_bad_override_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    rc = main(["run", SMALL, "--out", str(out), "--set", "engine.block_size=0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "engine.block_size" in err
    assert not out.exists()
