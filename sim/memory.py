"""How many KV-cache blocks a GPU holds, computed the way vLLM 0.32 computes it.

vLLM's arithmetic (vllm/v1/worker/gpu_worker.py `Worker.determine_available_memory`,
vllm/utils/mem_utils.py `memory_profiling`, vllm/v1/worker/utils.py `request_memory`,
vllm/v1/core/kv_cache_utils.py `get_kv_cache_config_from_groups`):

    requested    = ceil(total_memory * gpu_memory_utilization)
    available_kv = requested - weights - transient activation peak of the profile run
                   - other memory the engine holds (non-torch, runner buffers) - CUDA graph memory
    num_gpu_blocks = available_kv // (page bytes per layer * num_layers)

with page bytes per layer = 2 (K and V) * block_size * kv_heads_per_rank * head_dim * dtype bytes
(vllm/v1/kv_cache_interface.py `AttentionSpec.page_size_bytes`; fp8 / int8 KV: 1 byte); with
multi-head latent attention (`MLAAttentionSpec`) block_size * (kv_lora_rank + qk_rope_head_dim) *
dtype bytes, the same on every TP rank.
`num_gpu_blocks` counts every block vLLM allocates; the block pool keeps block 0 as its null
block (vllm/v1/core/block_pool.py), so `num_gpu_blocks - 1` blocks can hold tokens.  vLLM's
start-up check (`_check_enough_kv_cache_memory`) plans against those usable blocks too.
CPU swap blocks = swap_space GiB // block bytes of all layers.

What is modelled rather than measured:
- the activation peak.  vLLM's `profile_run` runs one dummy forward of `max_num_batched_tokens`
  tokens spread over `min(max_num_seqs, tokens)` requests, then the sampler on one row per
  request (`_dummy_sampler_run`).  The transient peak (torch's allocated peak minus what stays
  allocated) is the larger of
    forward: one layer's live tensors: residual + input + gate/up output (2 x intermediate per
             token for a gated MLP, 1 x for OPT) + activation output, or the attention block's
             q/k/v + output if larger, + the all-reduce output with TP > 1;
    sampler: bf16 logits over the padded vocabulary (+ the rank's shard before the all-gather),
             their fp32 copy, softmax probabilities and the exponential noise of random sampling
             (4 + 4 + 4 bytes per logit), all alive at once in the profile's warm-up of the native
             sampling path, + the forward's final hidden states.
- the rest as documented constants: non-torch memory that appears after the start-up snapshot
  (cuBLAS/cuBLASLt workspaces, the attention backend's workspace, the runner's persistent
  buffers), NCCL buffers allocated at the first all-reduce when TP > 1, and the CUDA graph pool
  that vLLM >= 0.21 profiles and subtracts (`profile_cudagraph_memory`; ~0.5 GiB for an 8B
  model capturing up to 512-token graphs).

On Llama-3-8B, H100 SXM, gpu_memory_utilization 0.9, block 16, 8192 batched tokens and 1024
sequences this gives 53.79 GiB for the KV cache: 27,538 blocks of 2 MiB, "GPU KV cache size:
440,608 tokens" in vLLM's log line (which counts the null block), 27,537 usable blocks = 440,592
tokens; vLLM reports ~53-54 GiB and ~440k tokens on that setup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sim.errors import ScenarioError
from sim.schema import Ctx

GIB = 1 << 30
NON_TORCH_BYTES = int(0.25 * GIB)     # cuBLAS/attention workspaces, runner buffers (estimate, per GPU)
TP_COMM_BYTES = int(0.25 * GIB)       # NCCL + custom all-reduce buffers when TP > 1 (estimate, per GPU)
CUDA_GRAPH_BYTES = int(0.5 * GIB)     # captured graphs' private pool (estimate, per GPU)
LOGIT_BYTES = 4 + 4 + 4               # fp32 logits, probs, exponential noise per vocabulary entry


@dataclass(frozen=True, slots=True)
class KVCapacity:
    """The KV cache of one GPU (one rank of a TP group); all ranks of a group have the same."""

    num_gpu_blocks: int                 # blocks vLLM allocates, block 0 (the null block) included
    num_cpu_blocks: int                 # swap space in blocks
    block_size: int                     # tokens per block
    block_bytes: int                    # one block of all layers on one rank
    weight_bytes: int                   # per GPU
    activation_peak_bytes: int          # transient peak of the profile run (modelled)
    available_kv_bytes: int             # what vLLM divides into blocks (0 when overridden and negative)
    other_bytes: int = 0                # non-torch + TP buffers + CUDA graphs (documented constants)
    null_block: bool = True             # vLLM v1 keeps block 0 out of use; V0 and contiguous allocators do not

    @property
    def num_usable_gpu_blocks(self) -> int:
        """Blocks that can hold tokens: all but the null block (v1)."""
        return self.num_gpu_blocks - (1 if self.null_block else 0)

    @property
    def max_concurrent_tokens(self) -> int:
        """Tokens the usable blocks hold at once (vLLM's log line counts the null block too)."""
        return self.num_usable_gpu_blocks * self.block_size

    def describe(self, max_model_len: int) -> list[str]:
        """vLLM's start-up log lines (gpu_worker, kv_cache_utils `update_kv_cache_capacity`) + ours."""
        blocks_per_request = math.ceil(max_model_len / self.block_size)
        concurrency = self.num_gpu_blocks / blocks_per_request
        return [
            f"Model weights: {self.weight_bytes / GIB:.2f} GiB per GPU; profiled activation peak "
            f"{self.activation_peak_bytes / GIB:.2f} GiB; non-torch and CUDA graphs {self.other_bytes / GIB:.2f} GiB",
            f"Available KV cache memory: {self.available_kv_bytes / GIB:.2f} GiB",
            f"GPU KV cache size: {int(concurrency * max_model_len):,} tokens, "
            f"Maximum concurrency for {max_model_len:,} tokens per request: {concurrency:.2f}x",
            f"KV blocks: {self.num_gpu_blocks:,} of {self.block_size} tokens ({self.block_bytes / (1 << 20):.2f} MiB); "
            f"{self.num_usable_gpu_blocks:,} usable{' (block 0 is the null block)' if self.null_block else ''} "
            f"= {self.max_concurrent_tokens:,} tokens",
            f"CPU swap blocks: {self.num_cpu_blocks:,}",
        ]


def activation_peak_bytes(model: Any, tp: int, max_num_batched_tokens: int, max_num_seqs: int,
                          expert_parallel: bool = False) -> int:
    """Transient peak of vLLM's profile run (forward of the token budget, then the sampler), per GPU."""
    tokens, act = max_num_batched_tokens, model.activation_bytes
    h, d = model.hidden_size, model.head_size
    inter = model.intermediate_size // tp
    mlp = (3 if model.gated_mlp else 2) * inter                      # gate/up (or fc1) + activation out
    if getattr(model, "num_experts", 0):
        # fused_moe's workspaces for the T x k expert-token pairs: gate/up out (2N), activation out
        # (N) and the per-pair down output (hidden) before the top-k sum (N = one rank's expert width)
        n = model.moe_intermediate_size // (1 if expert_parallel else tp)   # EP: whole experts
        moe = model.num_experts_per_tok * (3 * n + h)
        mlp = max(mlp if model.num_dense_layers else 0, moe)
    q, kv = model.num_attention_heads // tp * d, model.kv_heads_per_rank(tp) * d
    attn = (q + 2 * kv) + q                                          # qkv output + attention output
    layer = 2 * h + max(mlp, attn) + (h if tp > 1 else 0)            # + residual, input, all-reduce out
    forward = tokens * layer * act
    rows = min(max_num_seqs, tokens)
    vocab_padded = model.vocab_per_rank(1)
    shard = model.vocab_per_rank(tp) * act if tp > 1 else 0          # lm_head output before all-gather
    sampler = rows * (vocab_padded * act + shard + model.vocab_size * LOGIT_BYTES) + tokens * h * act
    return int(max(forward, sampler))


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / GIB:.2f}"


def compute_kv_capacity(model: Any, hw: Any, *, block_size: int, kv_cache_dtype: str,
                        gpu_memory_utilization: float, swap_space_gib: float, tensor_parallel_size: int,
                        max_num_batched_tokens: int, max_num_seqs: int, num_gpu_blocks_override: int | None = None,
                        max_model_len: int | None = None, ctx: Ctx | None = None,
                        enable_expert_parallel: bool = False) -> KVCapacity:
    """KV blocks per GPU for this engine; ScenarioError (one line) when the model does not fit.

    `max_model_len` defaults to the model's; one request of that length must fit in the usable
    blocks, as vLLM checks at start-up.  `num_gpu_blocks_override` replaces the profiled count
    (vLLM's --num-gpu-blocks-override) and skips the memory checks, as vLLM does.
    `enable_expert_parallel`: an MoE model's experts are split whole across the TP group.
    """
    ctx = ctx or Ctx("")
    file = ctx.file
    tp = tensor_parallel_size
    max_len = max_model_len or model.max_model_len
    ep = enable_expert_parallel and getattr(model, "num_experts", 0) > 0
    if ep:
        model.check_tensor_parallel(tp, Ctx(file, "engine.tensor_parallel_size"), expert_parallel=True)
        weights = model.weight_bytes(tp, expert_parallel=True)
    else:
        model.check_tensor_parallel(tp, Ctx(file, "engine.tensor_parallel_size"))
        weights = model.weight_bytes(tp)
    block_bytes = model.kv_bytes_per_token(kv_cache_dtype, tp) * block_size
    act = activation_peak_bytes(model, tp, max_num_batched_tokens, max_num_seqs, ep)
    other = NON_TORCH_BYTES + (TP_COMM_BYTES if tp > 1 else 0) + CUDA_GRAPH_BYTES
    total = int(hw.memory_gib * GIB)
    requested = math.ceil(total * gpu_memory_utilization)
    available = requested - weights - act - other
    budget = (f"{gpu_memory_utilization} x {hw.memory_gib:.2f} GiB = {_gib(requested)} GiB of {hw.name} "
              f"at tensor_parallel_size={tp}")
    if num_gpu_blocks_override is not None:
        if weights > total:
            raise ScenarioError(file, "engine.tensor_parallel_size",
                                f"{model.name} does not fit: the model's weights ({_gib(weights)} GiB per GPU) "
                                f"exceed the {hw.memory_gib:.2f} GiB of {hw.name}; raise tensor_parallel_size", tp, True)
        num_blocks = num_gpu_blocks_override
    elif weights >= requested:
        raise ScenarioError(file, "engine.gpu_memory_utilization",
                            f"{model.name} does not fit: the model's weights ({_gib(weights)} GiB per GPU) do not fit "
                            f"in {budget}; raise tensor_parallel_size", gpu_memory_utilization, True)
    elif available <= 0:
        raise ScenarioError(file, "engine.gpu_memory_utilization",
                            f"{model.name} does not fit: no available memory for the cache blocks: weights "
                            f"{_gib(weights)} GiB + activations {_gib(act)} GiB + non-torch and CUDA graphs "
                            f"{_gib(other)} GiB per GPU exceed {budget}; raise gpu_memory_utilization or "
                            "tensor_parallel_size, or lower max_num_batched_tokens / max_num_seqs",
                            gpu_memory_utilization, True)
    else:
        num_blocks = available // block_bytes
    if num_blocks < 2:
        raise ScenarioError(file, "engine", f"only {num_blocks} KV block(s) fit; vLLM needs at least 2 "
                            "(block 0 is the null block)")
    if num_gpu_blocks_override is None:
        _check_one_request_fits(available, block_bytes, block_size, max_len, file)
    cpu_blocks = int(swap_space_gib * GIB) // block_bytes
    return KVCapacity(int(num_blocks), cpu_blocks, block_size, block_bytes, weights, act, max(available, 0), other)


def _check_one_request_fits(available: int, block_bytes: int, block_size: int, max_len: int, file: str) -> None:
    """vLLM's `_check_enough_kv_cache_memory`, planned against all blocks but the null block."""
    usable = available - block_bytes
    needed = math.ceil(max_len / block_size) * block_bytes
    if needed <= usable:
        return
    estimated = min(max_len, max(usable, 0) // block_bytes * block_size)
    hint = f"Based on the available memory, the estimated maximum model length is {estimated}. " if estimated else ""
    raise ScenarioError(file, "engine.max_model_len",
                        f"To serve at least one request with the model's max seq len ({max_len}), "
                        f"({_gib(needed)} GiB KV cache is needed, which is larger than the available KV cache "
                        f"memory ({_gib(usable)} GiB). {hint}Try increasing gpu_memory_utilization or decreasing "
                        "max_model_len", max_len, True)
