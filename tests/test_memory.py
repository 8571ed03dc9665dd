"""KV capacity: vLLM's formula, hand-worked."""

from __future__ import annotations

import pytest

from sim.errors import ScenarioError
from sim.hardware import PRESETS as GPUS
from sim.hardware import load_hardware
from sim.memory import CUDA_GRAPH_BYTES, GIB, NON_TORCH_BYTES, activation_peak_bytes, compute_kv_capacity
from sim.models import PRESETS
from sim.schema import Ctx

KW = dict(block_size=16, kv_cache_dtype="auto", gpu_memory_utilization=0.9, swap_space_gib=4,
          tensor_parallel_size=1, max_num_batched_tokens=8192, max_num_seqs=1024)


def test_block_bytes_and_count_follow_vllm_formula():
    m, h = PRESETS["llama-3-8b"], GPUS["H100-SXM"]
    cap = compute_kv_capacity(m, h, **KW)
    assert cap.block_bytes == 2 * 1024 * 1024                     # 16 tokens x 128 KiB
    avail = int(h.memory_gib * GIB * 0.9) - m.weight_bytes(1) - activation_peak_bytes(m, 1, 8192, 1024) \
        - NON_TORCH_BYTES - CUDA_GRAPH_BYTES
    assert cap.num_gpu_blocks == avail // cap.block_bytes
    assert 400_000 < cap.max_concurrent_tokens < 480_000            # vLLM logs ~440k tokens here
    assert cap.num_cpu_blocks == 4 * GIB // cap.block_bytes == 2048


def test_fp8_kv_doubles_the_blocks():
    m, h = PRESETS["llama-3-8b"], GPUS["H100-SXM"]
    bf16 = compute_kv_capacity(m, h, **KW).num_gpu_blocks
    fp8 = compute_kv_capacity(m, h, **{**KW, "kv_cache_dtype": "fp8"}).num_gpu_blocks
    assert fp8 in (2 * bf16, 2 * bf16 + 1)


def test_70b_on_one_gpu_is_refused_in_one_line():
    with pytest.raises(ScenarioError) as e:
        compute_kv_capacity(PRESETS["llama-3-70b"], GPUS["H100-SXM"], **KW, ctx=Ctx("s.yaml"))
    msg = str(e.value)
    assert "\n" not in msg and "gpu_memory_utilization" in msg and "does not fit" in msg


def test_hardware_overrides_and_unknown_gpu():
    h = load_hardware("h100", {"price_per_hour_usd": 2.0}, Ctx("s.yaml", "hardware"))
    assert h.name == "H100-SXM" and h.price_per_hour_usd == 2.0
    with pytest.raises(ScenarioError):
        load_hardware("V100", {}, Ctx("s.yaml", "hardware"))
    with pytest.raises(ScenarioError):
        load_hardware("h100", {"colour": 1}, Ctx("s.yaml", "hardware"))
