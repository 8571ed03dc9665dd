"""KV capacity: vLLM 0.32's formula, hand-worked on Llama-3-8B / H100 SXM."""

from __future__ import annotations

import math

import pytest

import sim.memory as mem
from sim.errors import ScenarioError
from sim.hardware import PRESETS as GPUS
from sim.memory import GIB, activation_peak_bytes, compute_kv_capacity
from sim.model_catalog import PRESETS
from sim.schema import Ctx

KW = dict(block_size=16, kv_cache_dtype="auto", gpu_memory_utilization=0.9, swap_space_gib=4,
          tensor_parallel_size=1, max_num_batched_tokens=8192, max_num_seqs=1024)
LLAMA, H100 = PRESETS["llama-3-8b"], GPUS["H100-SXM"]
MIB = 1 << 20


def refused(model: str, **kw: object) -> str:
    with pytest.raises(ScenarioError) as e:
        compute_kv_capacity(PRESETS[model], H100, **{**KW, **kw}, ctx=Ctx("s.yaml"))   # type: ignore[arg-type]
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.yaml: ")
    return msg


def test_activation_peak_of_the_profile_run():
    # sampler: 1024 rows x 128256 logits x (2 bf16 + 4 fp32 + 4 probs + 4 noise) + the 8192 x 4096 hidden states
    sampler = 1024 * 128256 * 14 + 8192 * 4096 * 2
    assert activation_peak_bytes(LLAMA, 1, 8192, 1024) == sampler
    # one sequence: the forward pass dominates: residual + input + gate/up (2 x 14336) + SiLU output (14336)
    assert activation_peak_bytes(LLAMA, 1, 8192, 1) == 8192 * (2 * 4096 + 3 * 14336) * 2


def test_block_bytes_and_count_follow_vllm_formula():
    cap = compute_kv_capacity(LLAMA, H100, **KW)
    assert cap.block_bytes == 2 * 16 * 8 * 128 * 2 * 32 == 2 * MIB      # per layer 64 KiB x 32 layers
    requested = math.ceil(int(79.19 * GIB) * 0.9)
    weights = 2 * 8_030_261_248 + 8192 * 128 * 2
    available = requested - weights - (1024 * 128256 * 14 + 8192 * 4096 * 2) - mem.NON_TORCH_BYTES - mem.CUDA_GRAPH_BYTES
    assert (cap.weight_bytes, cap.available_kv_bytes) == (weights, available)
    assert cap.num_gpu_blocks == available // (2 * MIB) == 27_538
    assert cap.num_usable_gpu_blocks == 27_537                         # block 0 is the null block
    assert cap.max_concurrent_tokens == 27_537 * 16 == 440_592
    # vLLM on this setup reports ~53-54 GiB for the KV cache, ~440k tokens
    assert 53 * GIB < cap.available_kv_bytes < 55 * GIB
    assert cap.num_cpu_blocks == 4 * GIB // cap.block_bytes == 2048


def test_describe_mirrors_vllm_log_lines():
    cap = compute_kv_capacity(LLAMA, H100, **KW)
    lines = cap.describe(8192)
    assert "Available KV cache memory: 53.79 GiB" in lines
    # vLLM counts all blocks (null block included): 27538 / 512 blocks per request
    assert "GPU KV cache size: 440,608 tokens, Maximum concurrency for 8,192 tokens per request: 53.79x" in lines


def test_fp8_kv_doubles_the_blocks():
    bf16 = compute_kv_capacity(LLAMA, H100, **KW)
    fp8 = compute_kv_capacity(LLAMA, H100, **{**KW, "kv_cache_dtype": "fp8"})
    assert fp8.block_bytes * 2 == bf16.block_bytes
    assert fp8.num_gpu_blocks in (2 * bf16.num_gpu_blocks, 2 * bf16.num_gpu_blocks + 1)


def test_block_size_and_utilization_scale_as_expected():
    b16 = compute_kv_capacity(LLAMA, H100, **KW).num_gpu_blocks
    b32 = compute_kv_capacity(LLAMA, H100, **{**KW, "block_size": 32}).num_gpu_blocks
    assert b32 == b16 // 2
    lower = compute_kv_capacity(LLAMA, H100, **{**KW, "gpu_memory_utilization": 0.8}).available_kv_bytes
    assert compute_kv_capacity(LLAMA, H100, **KW).available_kv_bytes - lower == pytest.approx(0.1 * 79.19 * GIB, abs=2)


def test_70b_tensor_parallel_4():
    cap = compute_kv_capacity(PRESETS["llama-3-70b"], H100, **{**KW, "tensor_parallel_size": 4})
    assert cap.block_bytes == 2 * 16 * 2 * 128 * 2 * 80                # 2 KV heads per rank
    requested = math.ceil(int(79.19 * GIB) * 0.9)
    other = mem.NON_TORCH_BYTES + mem.TP_COMM_BYTES + mem.CUDA_GRAPH_BYTES
    assert cap.num_gpu_blocks == (requested - cap.weight_bytes - cap.activation_peak_bytes - other) // cap.block_bytes
    assert 28_000 < cap.num_gpu_blocks < 30_000                       # ~465k tokens per replica


def test_override_replaces_the_profiled_count():
    cap = compute_kv_capacity(LLAMA, H100, **KW, num_gpu_blocks_override=100)
    assert (cap.num_gpu_blocks, cap.max_concurrent_tokens) == (100, 99 * 16)


def test_70b_on_one_gpu_is_refused_in_one_line():
    msg = refused("llama-3-70b")
    assert "engine.gpu_memory_utilization" in msg and "does not fit" in msg
    assert "the model's weights (131.42 GiB per GPU) do not fit in 0.9 x 79.19 GiB = 71.27 GiB" in msg


def test_no_memory_left_for_the_cache_is_refused():
    msg = refused("llama-3-70b", tensor_parallel_size=2, gpu_memory_utilization=0.85)
    assert "engine.gpu_memory_utilization" in msg and "no available memory for the cache blocks" in msg


def test_one_max_len_request_must_fit_in_the_usable_blocks():
    # 70B at TP=2: 1064 blocks, 1063 usable = 17,008 tokens
    msg = refused("llama-3-70b", tensor_parallel_size=2, max_model_len=32768)
    assert "s.yaml: engine.max_model_len:" in msg
    assert "To serve at least one request with the model's max seq len (32768)" in msg
    assert "larger than the available KV cache memory" in msg
    assert "the estimated maximum model length is 17008" in msg


def test_tensor_parallel_vllm_refuses():
    assert "engine.tensor_parallel_size" in refused("qwen2.5-7b", tensor_parallel_size=8)
