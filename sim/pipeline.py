"""Pipeline parallelism: how vLLM splits the layers over stages, what each stage holds, and
when a batch leaves each stage.  Pure functions and plain state; the SimPy loop is in sim.engine.

Followed: vLLM 0.32 vllm/distributed/utils.py `get_pp_indices` (the layer split, or
VLLM_PP_LAYER_PARTITION), vllm/v1/engine/core.py `step_with_batch_queue` (a batch queue of
`max_concurrent_batches` = pipeline_parallel_size batches, vllm/config/vllm.py, with the
synchronous scheduler), vllm/v1/worker/gpu_worker.py `determine_available_memory` (each stage's
workers profile their own layers; `get_kv_cache_configs` takes the MIN block count over workers).

What always holds:
* stage i holds `stage_layers[i]` decoder layers (sum = num_layers); the first stage also holds the
  token embedding, the last the final norm and the LM head (its own copy even when tied);
* a batch passes stage 0, 1, ..., p-1 in turn; a stage works on one batch at a time, batches keep
  their order; stage i's time = its share of the batch's GPU time + sending the activations
  (hidden states and residual: 2 x tokens x hidden x dtype bytes, split over the TP ranks as
  vLLM's all-gather-group send does) to stage i+1;
* the engine's KV block count is the least over the stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sim.errors import ScenarioError
from sim.memory import (
    CUDA_GRAPH_BYTES,
    GIB,
    NON_TORCH_BYTES,
    TP_COMM_BYTES,
    KVCapacity,
    _check_one_request_fits,
    activation_peak_bytes,
)

INFINIBAND_BYTES_PER_S = 50e9      # 400 Gb/s NDR per GPU, per direction (between nodes)
GPUS_PER_NODE = 8                  # an HGX / DGX node: stages of a replica up to 8 GPUs talk over NVLink


def stage_link_bytes_per_s(hw: Any, tp: int, pp: int) -> float:
    """The link between consecutive stages: NVLink while the replica's tp x pp GPUs fit in one
    node, else InfiniBand (stage boundaries then cross nodes; with tp x pp = 16 on 8-GPU nodes
    the one boundary does)."""
    return hw.interconnect_bytes_per_s if tp * pp <= GPUS_PER_NODE else INFINIBAND_BYTES_PER_S


def stage_layers(num_layers: int, pp: int, partition: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Layers per stage, as vLLM's `get_pp_indices`: L // p each; the remainder goes one layer
    each to the stages before the last, from the second-to-last backwards (the last stage holds
    the LM head, so it is spared).  `partition` plays VLLM_PP_LAYER_PARTITION."""
    if partition:
        if len(partition) != pp or sum(partition) != num_layers:
            raise ValueError(f"partition {partition} must have {pp} entries summing to {num_layers}")
        return tuple(partition)
    parts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        parts[-i] += 1
    return tuple(parts)


def pp_indices(num_layers: int, rank: int, pp: int) -> tuple[int, int]:
    """[start, end) layer indices of stage `rank` (vLLM's `get_pp_indices` return value)."""
    parts = stage_layers(num_layers, pp)
    start = sum(parts[:rank])
    return start, start + parts[rank]


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of a replica: its layers, weights, KV blocks (per GPU of its TP group)."""

    layers: int
    weight_bytes: int
    block_bytes: int                # one KV block of this stage's layers on one rank
    available_kv_bytes: int
    num_gpu_blocks: int
    linear_share: float             # fraction of the model's linear weights (the step-time share)


def stage_weight_bytes(model: Any, tp: int, layers: int, first: bool, last: bool) -> int:
    """Weights on one GPU of a stage: its layers, the embedding (first), final norm + LM head
    (last) and the rotary cache every stage keeps."""
    act = model.activation_bytes
    linear = layers * model._layer_linear_params(tp) * model.dtype_bytes
    other = layers * model._layer_other_params(tp)
    head = model.vocab_per_rank(tp) * model.embed_dim
    final_norm = model.hidden_size if model.gated_mlp else 2 * model.hidden_size
    embedding = model._embedding_params(tp)          # token embedding (+ OPT's extras), head, final norm
    tied = model.tie_word_embeddings
    if first:                                        # everything but the head and the final norm
        other += embedding - (0 if tied else head) - final_norm
    if last:                                         # its own head copy unless stage 0 is also the last
        other += (0 if tied and first else head) + final_norm
    rotary = model.max_model_len * model.head_size * act if model.gated_mlp else 0
    return linear + other * act + rotary


def plan_stages(model: Any, hw: Any, *, tp: int, pp: int, block_size: int, kv_cache_dtype: str,
                gpu_memory_utilization: float, max_num_batched_tokens: int, max_num_seqs: int,
                file: str = "") -> tuple[StagePlan, ...]:
    """Each stage's memory as its workers profile it: requested - its weights - its activation
    peak (the sampler's only on the last stage) - non-torch, NCCL and CUDA-graph memory."""
    layers = stage_layers(model.num_layers, pp)
    total = int(hw.memory_gib * GIB)
    requested = math.ceil(total * gpu_memory_utilization)
    other = NON_TORCH_BYTES + TP_COMM_BYTES + CUDA_GRAPH_BYTES        # PP > 1: NCCL send/recv buffers too
    per_layer_kv = model.kv_bytes_per_token(kv_cache_dtype, tp) // model.num_layers
    layer_linear = model._layer_linear_params(tp)
    all_linear = model.linear_params(tp)
    out = []
    for i, n in enumerate(layers):
        first, last = i == 0, i == pp - 1
        weights = stage_weight_bytes(model, tp, n, first, last)
        act = activation_peak_bytes(model, tp, max_num_batched_tokens, max_num_seqs if last else 0)
        available = requested - weights - act - other
        block_bytes = per_layer_kv * n * block_size
        if available <= 0:
            raise ScenarioError(file, "engine.pipeline_parallel_size",
                                f"{model.name} does not fit: stage {i} ({n} layers) needs {weights / GIB:.2f} GiB of "
                                f"weights + {act / GIB:.2f} GiB of activations per GPU; raise pipeline_parallel_size "
                                "or tensor_parallel_size", pp, True)
        share = (n * layer_linear + (model._lm_head_params(tp) if last else 0)) / all_linear
        out.append(StagePlan(n, weights, block_bytes, available, available // block_bytes, share))
    return tuple(out)


def pipeline_capacity(model: Any, hw: Any, *, tp: int, pp: int, block_size: int, kv_cache_dtype: str,
                      gpu_memory_utilization: float, swap_space_gib: float, max_num_batched_tokens: int,
                      max_num_seqs: int, max_model_len: int, num_gpu_blocks_override: int | None = None,
                      file: str = "") -> tuple[KVCapacity, tuple[StagePlan, ...]]:
    """The engine's KV capacity with PP: the least of the stages' block counts (vLLM's min over
    workers), reported with the bytes of the stage that sets it; and every stage's plan."""
    from sim.schema import Ctx
    model.check_tensor_parallel(tp, Ctx(file, "engine.tensor_parallel_size"))
    stages = plan_stages(model, hw, tp=tp, pp=pp, block_size=block_size, kv_cache_dtype=kv_cache_dtype,
                         gpu_memory_utilization=gpu_memory_utilization, max_num_batched_tokens=max_num_batched_tokens,
                         max_num_seqs=max_num_seqs, file=file)
    k = min(range(pp), key=lambda i: (stages[i].num_gpu_blocks, i))
    s = stages[k]
    blocks = num_gpu_blocks_override if num_gpu_blocks_override is not None else s.num_gpu_blocks
    if blocks < 2:
        raise ScenarioError(file, "engine", f"only {blocks} KV block(s) fit on stage {k}; vLLM needs at least 2 "
                            "(block 0 is the null block)")
    if num_gpu_blocks_override is None:
        _check_one_request_fits(s.available_kv_bytes, s.block_bytes, block_size, max_model_len, file)
    act = activation_peak_bytes(model, tp, max_num_batched_tokens, max_num_seqs if k == pp - 1 else 0)
    cap = KVCapacity(int(blocks), int(swap_space_gib * GIB) // s.block_bytes, block_size, s.block_bytes,
                     s.weight_bytes, act, s.available_kv_bytes, NON_TORCH_BYTES + TP_COMM_BYTES + CUDA_GRAPH_BYTES)
    return cap, stages


def transfer_s_per_token(model: Any, tp: int, link_bytes_per_s: float) -> float:
    """Seconds per token to send hidden states + residual to the next stage, each TP rank its
    1/tp slice (vLLM's `send_tensor_dict(..., all_gather_group=tp group)`)."""
    return 2.0 * model.hidden_size * model.activation_bytes / tp / link_bytes_per_s


class PipelineClock:
    """When each stage is next free, and how long each has been busy (the bubble measure).

    `launch` places a batch: stage i starts when the batch leaves stage i-1 and stage i is free.
    """

    __slots__ = ("shares", "transfer_s_per_token", "overhead_s", "free_s", "busy_s", "first_s", "last_s", "stages")

    def __init__(self, shares: tuple[float, ...], transfer_s_per_token: float, overhead_s: float,
                 stages: tuple[StagePlan, ...] = ()):
        self.shares = shares                      # each stage's fraction of the batch's GPU time
        self.transfer_s_per_token = transfer_s_per_token
        self.overhead_s = overhead_s              # CPU per batch (schedule, prepare, update), serial
        self.free_s = [0.0] * len(shares)
        self.busy_s = [0.0] * len(shares)
        self.first_s = -1.0                       # first launch (bubble measured from here)
        self.last_s = 0.0                         # last batch out
        self.stages = stages

    @property
    def num_stages(self) -> int:
        return len(self.shares)

    def launch(self, now_s: float, gpu_s: float, tokens: int) -> float:
        """Run a batch of `gpu_s` whole-model GPU seconds and `tokens` tokens through the
        stages from `now_s`; returns when its output is back (the last stage is done)."""
        if self.first_s < 0.0:
            self.first_s = now_s
        t = now_s
        free, busy = self.free_s, self.busy_s
        last = len(free) - 1
        send = self.transfer_s_per_token * tokens
        i = 0
        for share in self.shares:
            f = free[i]
            start = t if t > f else f
            dt = gpu_s * share + (send if i < last else 0.0)
            t = start + dt
            free[i] = t
            busy[i] += dt
            i += 1
        self.last_s = t
        return t

    def save(self) -> tuple[list[float], list[float], float, float]:
        return self.free_s[:], self.busy_s[:], self.first_s, self.last_s

    def restore(self, state: tuple[list[float], list[float], float, float]) -> None:
        """Undo the launches since `save` (a quiet stretch planned and dropped)."""
        self.free_s, self.busy_s, self.first_s, self.last_s = state[0][:], state[1][:], state[2], state[3]

    def bubble_frac(self) -> float:
        """Share of stage-time idle between the first launch and the last batch out."""
        span = self.last_s - self.first_s
        if self.first_s < 0.0 or span <= 0.0:
            return 0.0
        return 1.0 - sum(self.busy_s) / (len(self.shares) * span)


def summary(clocks: list[PipelineClock]) -> dict[str, Any]:
    """summary.json keys for PP > 1 replicas (bubble and busy shares: the mean over replicas)."""
    stages = clocks[0].stages
    used = [c for c in clocks if c.first_s >= 0.0] or clocks
    busy = [[b / max(c.last_s - c.first_s, 1e-12) for b in c.busy_s] for c in used]
    return {"pp_bubble_frac": sum(c.bubble_frac() for c in used) / len(used),
            "pp_stage_layers": [s.layers for s in stages],
            "pp_stage_weight_gib": [s.weight_bytes / GIB for s in stages],
            "pp_stage_kv_gib": [s.available_kv_bytes / GIB for s in stages],
            "pp_stage_kv_blocks": [s.num_gpu_blocks for s in stages],
            "pp_stage_busy_frac": [sum(b[i] for b in busy) / len(busy) for i in range(len(stages))],
            "pp_transfer_s_per_token": clocks[0].transfer_s_per_token}
