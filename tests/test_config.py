"""Every malformed scenario is refused with one line naming the file, the key path and the value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sim.config import load_scenario
from sim.deployment import build_deployment
from sim.errors import ScenarioError
from sim.runner import run_scenario

ROOT = Path(__file__).resolve().parents[1]
BASE = {"model": "llama-3-8b", "hardware": {"gpu": "H100-SXM"}, "engine": {"block_size": 16},
        "workload": {"arrival": {"process": "poisson", "rate": 2},
                     "lengths": {"input": {"dist": "fixed", "value": 100}, "output": {"dist": "fixed", "value": 10}}},
        "run": {"num_requests": 5}}


def write(tmp_path: Path, doc) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def refused(tmp_path: Path, doc, *expect: str, run: bool = False) -> str:
    p = write(tmp_path, doc)
    with pytest.raises(ScenarioError) as e:
        sc = load_scenario(p)
        if run:
            run_scenario(sc)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    for part in expect:
        assert part in msg, msg
    return msg


def merge(**sections):
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for k, v in sections.items():
        doc[k] = {**doc.get(k, {}), **v} if isinstance(v, dict) else v
    return doc


def test_the_base_scenario_loads(tmp_path):
    sc = load_scenario(write(tmp_path, BASE))
    assert sc.engine.block_size == 16 and build_deployment(sc).capacity.num_gpu_blocks > 1000


@pytest.mark.parametrize("sections, expect", [
    ({"engine": {"block_size": 0}}, ["engine.block_size", "got 0"]),
    ({"engine": {"block_sise": 16}}, ["engine.block_sise", "did you mean 'block_size'"]),
    ({"engine": {"max_num_seqs": "many"}}, ["engine.max_num_seqs", "'many'"]),
    ({"engine": {"enable_prefix_caching": "yes"}}, ["engine.enable_prefix_caching", "true or false"]),
    ({"engine": {"gpu_memory_utilization": 1.5}}, ["engine.gpu_memory_utilization"]),
    ({"engine": {"kv_cache_dtype": "fp4"}}, ["engine.kv_cache_dtype"]),
    ({"engine": {"scheduler": "vllm-v2"}}, ["engine.scheduler"]),
    ({"engine": {"preemption_mode": "swap"}}, ["engine.preemption_mode", "vllm-v0"]),
    ({"engine": {"tensor_parallel_size": 3}}, ["engine.tensor_parallel_size"]),
    ({"hardware": {"gpu": "V100"}}, ["hardware.gpu", "V100"]),
    ({"workload": {"arrival": {"process": "poisson", "rate": -1}}}, ["workload.arrival.rate"]),
    ({"slo": {"ttft_ms": 0}}, ["slo.ttft_ms"]),
    ({"model": "gpt-5"}, ["model", "gpt-5"]),
    ({"runn": {}}, ["runn", "did you mean 'run'"]),
])
def test_bad_values_and_keys(tmp_path, sections, expect):
    refused(tmp_path, merge(**sections), *expect)


def test_yaml_syntax_error_names_the_line(tmp_path):
    refused(tmp_path, "model: llama-3-8b\nengine: {block_size: 16\n", "not valid YAML", "line")


def test_missing_file(tmp_path):
    with pytest.raises(ScenarioError) as e:
        load_scenario(tmp_path / "nope.yaml")
    assert "not found" in str(e.value)


def test_model_that_does_not_fit(tmp_path):
    refused(tmp_path, merge(model="llama-3-70b"), "gpu_memory_utilization", "does not fit", run=True)


def test_prompt_longer_than_max_model_len(tmp_path):
    doc = merge(engine={"max_model_len": 512})
    doc["workload"]["lengths"]["input"] = {"dist": "fixed", "value": 600}
    refused(tmp_path, doc, "max_model_len is 512", run=True)


def test_overrides_are_checked_like_the_file(tmp_path):
    p = write(tmp_path, BASE)
    with pytest.raises(ScenarioError) as e:
        load_scenario(p, ["engine.block_size=7"])
    assert "engine.block_size" in str(e.value)
    assert load_scenario(p, ["engine.block_size=32"]).engine.block_size == 32


def test_every_example_scenario_loads():
    for p in sorted((ROOT / "scenarios").rglob("*.yaml")):
        if "sweeps" in p.parts:
            continue
        build_deployment(load_scenario(p))
