"""GPU presets: datasheet numbers, names and aliases, scenario overrides."""

from __future__ import annotations

import pytest

from sim.errors import ScenarioError
from sim.hardware import PRESETS, find_preset, load_hardware
from sim.schema import Ctx

CTX = Ctx("s.yaml", "hardware")


def test_datasheet_numbers():
    h100 = PRESETS["H100-SXM"]
    assert h100.memory_gib == 79.19 and h100.memory_bytes == int(79.19 * 2**30)
    assert h100.hbm_bandwidth_bytes_per_s == 3.35e12
    assert h100.fp8_flops == pytest.approx(2 * h100.bf16_flops, rel=1e-3)           # 1,979 / 989.5 TFLOPS dense
    assert PRESETS["H200"].bf16_flops == h100.bf16_flops and PRESETS["H200"].hbm_bandwidth_bytes_per_s == 4.8e12
    assert PRESETS["A100-80GB"].fp8_flops == PRESETS["A100-40GB"].fp8_flops == 0.0      # no FP8 on Ampere
    assert PRESETS["L40S"].interconnect_bytes_per_s == PRESETS["L40S"].host_link_bytes_per_s  # no NVLink
    for spec in PRESETS.values():
        spec.validate(CTX)
        assert 0 < spec.memory_gib < {"A100-40GB": 40, "RTX-4090": 24, "L40S": 48, "H200": 141}.get(spec.name, 80)
        assert 0.3 < spec.price_per_hour_usd < 10


@pytest.mark.parametrize("name, preset", [
    ("h100", "H100-SXM"), ("H100-SXM5-80GB", "H100-SXM"), ("NVIDIA H100 80GB HBM3", "H100-SXM"),
    ("h100-sxm", "H100-SXM"), ("a100", "A100-80GB"), ("A100-40GB", "A100-40GB"), ("h200", "H200"),
    ("l40s", "L40S"), ("rtx_4090", "RTX-4090"), ("4090", "RTX-4090"),
])
def test_names_are_case_insensitive_with_aliases(name, preset):
    spec = find_preset(name)
    assert spec is not None and spec.name == preset


def test_overrides_replace_fields():
    h = load_hardware("h100", {"price_per_hour_usd": 2, "memory_gib": 70}, CTX)
    assert (h.name, h.price_per_hour_usd, h.memory_gib) == ("H100-SXM", 2.0, 70.0)
    assert h.hbm_bandwidth_bytes_per_s == PRESETS["H100-SXM"].hbm_bandwidth_bytes_per_s
    assert PRESETS["H100-SXM"].price_per_hour_usd != 2.0            # presets are not mutated


def test_full_mapping():
    raw = {"name": "MI300X", "memory_gib": 191.5, "hbm_bandwidth_bytes_per_s": 5.3e12, "bf16_flops": 1307e12,
           "fp8_flops": 2615e12, "host_link_bytes_per_s": 50e9, "interconnect_bytes_per_s": 448e9,
           "price_per_hour_usd": 4}
    h = load_hardware(raw, {}, CTX)
    assert h.name == "MI300X" and h.price_per_hour_usd == 4.0


@pytest.mark.parametrize("ref, overrides, words", [
    ("V100", {}, ["s.yaml: hardware.gpu", "unknown GPU", "'V100'"]),
    ("h100", {"colour": 1}, ["hardware.overrides.colour", "unknown hardware field"]),
    ("h100", {"name": "x"}, ["hardware.overrides.name", "unknown hardware field"]),
    ("h100", {"memory_gib": "lots"}, ["hardware.overrides.memory_gib", "expected a number"]),
    ("h100", {"hbm_bandwidth_bytes_per_s": -1}, ["hardware.overrides.hbm_bandwidth_bytes_per_s", "must be > 0"]),
    ({"name": "x", "memory_gib": 8}, {}, ["hardware.gpu.hbm_bandwidth_bytes_per_s", "required key is missing"]),
])
def test_bad_hardware_is_a_one_line_error(ref, overrides, words):
    with pytest.raises(ScenarioError) as e:
        load_hardware(ref, overrides, CTX)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
