"""`pagesim validate --engine vllm-scheduler` end to end on the conformance scenarios: every step
identical to vLLM 0.32's own scheduler.  Refusals need no vLLM; the runs do (skipped with the
install command on a developer machine, failed in CI)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sim.validate.cli import main
from sim.validate.vllm_env import VllmUnavailable, find_vllm

ROOT = Path(__file__).resolve().parents[1]
VALIDATION = sorted(p for p in (ROOT / "scenarios" / "validation").glob("*.yaml")
                    if not p.name.startswith("engine-"))   # engine-*: the real engine (test_validate_engine.py)


def need_vllm() -> None:
    try:
        find_vllm()
    except VllmUnavailable as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def test_v0_and_baseline_settings_are_refused_in_one_line(capsys):
    from sim.errors import ScenarioError
    scenario = str(VALIDATION[0])
    for setting, key in (("engine.scheduler=vllm-v0", "engine.scheduler"),
                         ("engine.allocator=contiguous-max", "engine.allocator"),
                         ("engine.num_replicas=2", "engine.num_replicas")):
        extra = ["--set", "engine.enable_prefix_caching=false"] if "allocator" in setting else []
        if "vllm-v0" in setting:          # V0 defaults to no chunked prefill: 2048 tokens would be refused first
            extra = ["--set", "engine.enable_chunked_prefill=true"]
        with pytest.raises(ScenarioError) as e:
            main([scenario, "--set", setting, *extra])
        assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.vllm
def test_every_conformance_scenario_matches_vllm_step_for_step(tmp_path):
    need_vllm()
    assert len(VALIDATION) >= 8
    rc = main([str(p) for p in VALIDATION] + ["--out", str(tmp_path)])
    assert rc == 0
    summaries = list(tmp_path.glob("*/summary.json"))
    assert len(summaries) == len(VALIDATION)
    for s in summaries:
        d = json.loads(s.read_text())
        assert d["pct_identical"] == 100.0 and d["vllm_version"] == "0.32.0" and d["steps_compared"] > 100
    pressure = json.loads((tmp_path / "conf-kv-pressure" / "summary.json").read_text())
    assert pressure["pagesim"]["preemptions"] > 0
