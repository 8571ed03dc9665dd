"""How many KV-cache blocks a GPU holds, computed the way vLLM 0.32 computes it.

vLLM (vllm/v1/worker/gpu_worker.py `determine_available_memory`, vllm/v1/core/kv_cache_utils.py
`get_num_blocks`, `get_kv_cache_config_from_groups`) profiles one dummy forward pass with
`max_num_batched_tokens` tokens and then gives the KV cache what is left of the requested share:

    available_kv = total_memory * gpu_memory_utilization
                   - weights - peak activations - non-torch memory - CUDA graph memory
    num_gpu_blocks = available_kv // (page bytes per layer * num_layers)

with page bytes per layer = 2 (K and V) * block_size * kv_heads_per_rank * head_dim * dtype bytes
(fp8 / int8 KV: 1 byte).  Block 0 is vLLM v1's null block, so `num_gpu_blocks - 1` blocks
actually hold tokens.  CPU swap blocks (vllm-v0) = swap_space GiB // block bytes.

The profile run is modelled, not measured: peak activations are the largest tensors of one
layer's forward pass for `max_num_batched_tokens` tokens (the gate/up projection output, the
residual stream and attention buffers) plus the sampler's fp32 logits for `max_num_seqs` rows;
non-torch memory (cuBLAS workspaces, NCCL buffers) and CUDA graph memory are documented
constants.  On Llama-3-8B / H100 / 0.9 this gives ~27.5k blocks of 16 tokens (~440k tokens),
in line with what vLLM logs on that setup.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import ScenarioError
from sim.schema import Ctx

GIB = 1 << 30
NON_TORCH_BYTES = int(0.35 * GIB)     # cuBLAS/cuDNN workspaces, NCCL buffers (per GPU)
CUDA_GRAPH_BYTES = int(0.5 * GIB)     # captured decode graphs (vLLM profiles and subtracts them)


@dataclass(frozen=True, slots=True)
class KVCapacity:
    """The KV cache of one GPU (one rank of a TP group); all ranks of a group have the same."""

    num_gpu_blocks: int                 # including vLLM v1's null block
    num_cpu_blocks: int
    block_size: int
    block_bytes: int                    # all layers, one rank
    weight_bytes: int
    activation_peak_bytes: int
    available_kv_bytes: int

    @property
    def max_concurrent_tokens(self) -> int:
        return (self.num_gpu_blocks - 1) * self.block_size

    def describe(self, max_model_len: int) -> list[str]:
        """The lines vLLM logs at start-up (gpu_worker / kv_cache_utils), for the run summary."""
        return [
            f"Model weights: {self.weight_bytes / GIB:.2f} GiB per GPU; peak activations {self.activation_peak_bytes / GIB:.2f} GiB",
            f"Available KV cache memory: {self.available_kv_bytes / GIB:.2f} GiB",
            f"GPU KV cache size: {self.max_concurrent_tokens:,} tokens ({self.num_gpu_blocks:,} blocks of {self.block_size})",
            f"Maximum concurrency for {max_model_len:,} tokens per request: {self.max_concurrent_tokens / max_model_len:.2f}x",
            f"CPU swap blocks: {self.num_cpu_blocks:,}",
        ]


def activation_peak_bytes(model, tp: int, max_num_batched_tokens: int, max_num_seqs: int) -> int:
    t = max_num_batched_tokens
    b = 2  # activations in the model dtype (bf16/fp16)
    mlp = (2 if model.gated_mlp else 1) * model.intermediate_size // tp
    qkv = (model.num_attention_heads // tp + 2 * model.kv_heads_per_rank(tp)) * model.head_size
    layer = t * (mlp + qkv + 3 * model.hidden_size) * b
    logits = max_num_seqs * (model.vocab_size // tp) * 4 * 2   # fp32 logits + sampler copy
    return int(layer + logits)


def compute_kv_capacity(model, hw, *, block_size: int, kv_cache_dtype: str, gpu_memory_utilization: float,
                        swap_space_gib: float, tensor_parallel_size: int, max_num_batched_tokens: int,
                        max_num_seqs: int, num_gpu_blocks_override: int | None = None,
                        max_model_len: int | None = None, ctx: Ctx | None = None) -> KVCapacity:
    """KV blocks per GPU for this engine; ScenarioError (one line) when the model does not fit."""
    ctx = ctx or Ctx("")
    tp = tensor_parallel_size
    block_bytes = model.kv_bytes_per_token(kv_cache_dtype, tp) * block_size
    weights = model.weight_bytes(tp)
    act = activation_peak_bytes(model, tp, max_num_batched_tokens, max_num_seqs)
    requested = int(hw.memory_gib * GIB * gpu_memory_utilization)
    available = requested - weights - act - NON_TORCH_BYTES - CUDA_GRAPH_BYTES
    if num_gpu_blocks_override is not None:
        num_blocks = num_gpu_blocks_override
    else:
        if available <= 0:
            raise ScenarioError(ctx.file, "engine.gpu_memory_utilization",
                                f"{model.name} does not fit: weights {weights / GIB:.1f} GiB + activations "
                                f"{(act + NON_TORCH_BYTES + CUDA_GRAPH_BYTES) / GIB:.1f} GiB per GPU exceed "
                                f"{gpu_memory_utilization} x {hw.memory_gib:.1f} GiB of {hw.name}; raise "
                                "tensor_parallel_size or gpu_memory_utilization", gpu_memory_utilization, True)
        num_blocks = available // block_bytes
    if num_blocks < 2:
        raise ScenarioError(ctx.file, "engine", f"only {num_blocks} KV blocks fit; vLLM needs at least 2 (one is the null block)")
    if max_model_len is not None and (num_blocks - 1) * block_size < max_model_len and num_gpu_blocks_override is None:
        raise ScenarioError(ctx.file, "engine.max_model_len",
                            f"the model's max seq len ({max_model_len}) is larger than the maximum number of tokens "
                            f"that can be stored in KV cache ({(num_blocks - 1) * block_size}); increase "
                            "gpu_memory_utilization or decrease max_model_len", max_model_len, True)
    cpu_blocks = int(swap_space_gib * GIB) // block_bytes
    return KVCapacity(int(num_blocks), cpu_blocks, block_size, block_bytes, weights, act, max(available, 0))
