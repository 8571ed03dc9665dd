"""From a scenario to runnable replicas: memory -> KV blocks, profile -> step coster, limits.

Resolves the engine defaults the way vLLM 0.32's `EngineArgs` does for `vllm serve`
(vllm/engine/arg_utils.py `_get_default_max_num_seqs_and_batched_tokens`): GPUs with >= 160 GiB
get 16384 batched tokens / 1024 seqs, >= 70 GiB (not A100) 8192 / 1024, others 2048 / 256; without
chunked prefill the token budget is at least max_model_len.  Async scheduling defaults on (the
GPU engine's default); the CPU build forces it off.  `scheduler: vllm-v0` takes vLLM 0.8.5's
V0 defaults instead (2048 batched tokens with chunked prefill, else max(max_model_len, 2048);
256 seqs; watermark 0.01; synchronous) and builds `sim.scheduler_v0` over `sim.block_manager_v0`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from sim.block_manager_v0 import BlockManagerV0
from sim.config import Scenario
from sim.contiguous import ContiguousKVManager
from sim.cost_model import CostProfile, StepCoster, constant_profile, load_profile
from sim.errors import ScenarioError
from sim.hardware import load_hardware
from sim.kv_cache_manager import KVCacheManager
from sim.memory import compute_kv_capacity
from sim.pipeline import (
    PipelineClock,
    StagePlan,
    pipeline_capacity,
    stage_link_bytes_per_s,
    transfer_s_per_token,
)
from sim.replica import Replica
from sim.roofline import roofline_profile
from sim.scheduler_v0 import SchedulerV0
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1
from sim.schema import Ctx
from sim.spec_decode import SPEC_RNG_STREAM, capacity_with_drafter, proposer_cost
from sim.spec_runtime import SpecDecoder

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class Deployment:
    """Everything derived from the scenario that the engine needs, printed in the summary."""

    hardware: Any
    capacity: Any                     # sim.memory.KVCapacity
    profile: CostProfile
    limits: SchedulerLimits
    max_model_len: int
    kv_dtype: str
    async_scheduling: bool
    num_replicas: int
    price_per_hour_usd: float        # whole deployment: replicas x TP x PP x GPU price
    stages: tuple[StagePlan, ...] = ()   # PP > 1: each stage's layers, memory and KV blocks (sim.pipeline)

    def describe(self) -> list[str]:
        lines = list(self.capacity.describe(self.max_model_len))
        lines.append(f"max_num_seqs={self.limits.max_num_seqs} max_num_batched_tokens={self.limits.max_num_batched_tokens} "
                     f"chunked_prefill={self.limits.enable_chunked_prefill} async_scheduling={self.async_scheduling}")
        if self.stages:
            lines.append(f"pipeline: {len(self.stages)} stages of {[s.layers for s in self.stages]} layers; KV blocks "
                         f"per stage {[s.num_gpu_blocks for s in self.stages]} (the engine takes the least)")
        lines.append(f"cost profile: {self.profile.kind} ({self.profile.gpu}, {self.profile.model}, TP={self.profile.tensor_parallel_size})")
        return lines


def complete_profile(measured: CostProfile, datasheet: CostProfile) -> CostProfile:
    """Fill what a one-GPU kernel calibration cannot measure from the datasheet profile:
    the engine's per-step CPU overhead and, with TP > 1, the all-reduce.  An engine fit measured
    the whole step, so its overhead is taken as it is, zero included."""
    changes: dict[str, Any] = {}
    if measured.step_overhead_s == 0.0 and measured.kind != "engine-fit":
        changes["step_overhead_s"] = datasheet.step_overhead_s
    if measured.tensor_parallel_size > 1 and measured.allreduce_calls_per_step == 0:
        changes.update(allreduce_s_per_call=datasheet.allreduce_s_per_call,
                       allreduce_s_per_token=datasheet.allreduce_s_per_token,
                       allreduce_calls_per_step=datasheet.allreduce_calls_per_step)
    return replace(measured, **changes) if changes else measured


def serve_defaults(memory_gib: float, name: str) -> tuple[int, int]:
    """vLLM 0.32 `vllm serve` defaults: (max_num_batched_tokens, max_num_seqs)."""
    if memory_gib >= 160:
        return 16384, 1024
    if memory_gib >= 70 and "a100" not in name.lower():
        return 8192, 1024
    return 2048, 256


def build_deployment(sc: Scenario) -> Deployment:
    ctx = Ctx(sc.path)
    eng = sc.engine
    hw = load_hardware(sc.hardware.gpu, dict(sc.hardware.overrides), ctx.at("hardware"))
    max_model_len = eng.max_model_len or sc.model.max_model_len
    if eng.scheduler == "vllm-v0":      # vLLM 0.8.5 SchedulerConfig: 2048 tokens (chunked), 256 seqs
        default_mbt, default_seqs = 2048, 256
    else:
        default_mbt, default_seqs = serve_defaults(hw.memory_gib, hw.name)
    mbt = eng.max_num_batched_tokens or default_mbt
    if not eng.enable_chunked_prefill:
        mbt = max(mbt, max_model_len)
    seqs = eng.max_num_seqs or default_seqs
    pp = eng.pipeline_parallel_size
    stages: tuple[StagePlan, ...] = ()
    if pp > 1:
        capacity, stages = pipeline_capacity(
            sc.model, hw, tp=eng.tensor_parallel_size, pp=pp, block_size=eng.block_size,
            kv_cache_dtype=eng.kv_cache_dtype, gpu_memory_utilization=eng.gpu_memory_utilization,
            swap_space_gib=eng.swap_space, max_num_batched_tokens=mbt, max_num_seqs=seqs,
            max_model_len=max_model_len, num_gpu_blocks_override=eng.num_gpu_blocks_override, file=sc.path)
    else:
        capacity = compute_kv_capacity(
            sc.model, hw, block_size=eng.block_size, kv_cache_dtype=eng.kv_cache_dtype,
            gpu_memory_utilization=eng.gpu_memory_utilization, swap_space_gib=eng.swap_space,
            tensor_parallel_size=eng.tensor_parallel_size, max_num_batched_tokens=mbt, max_num_seqs=seqs,
            num_gpu_blocks_override=eng.num_gpu_blocks_override, max_model_len=max_model_len, ctx=ctx,
            enable_expert_parallel=eng.enable_expert_parallel)
    if eng.speculative_config is not None:      # the drafter's weights and KV share the GPU
        capacity = capacity_with_drafter(capacity, eng.speculative_config, sc.model, eng.tensor_parallel_size,
                                         eng.kv_cache_dtype, eng.num_gpu_blocks_override is not None)
    if eng.scheduler == "vllm-v0" or eng.allocator != "paged":
        capacity = replace(capacity, null_block=False)     # only vLLM v1's block pool reserves block 0
    if sc.hardware.constant_step_s is not None:
        profile = constant_profile(sc.hardware.constant_step_s)
    elif sc.hardware.profile is not None:
        from sim.traces import resolve_path
        profile = load_profile(resolve_path(sc.hardware.profile, ctx.at("hardware.profile")))
        if profile.tensor_parallel_size != eng.tensor_parallel_size:
            raise ScenarioError(sc.path, "hardware.profile",
                                f"profile was measured at TP={profile.tensor_parallel_size}, engine uses TP={eng.tensor_parallel_size}")
        profile = complete_profile(profile, roofline_profile(sc.model, hw, eng.tensor_parallel_size, eng.kv_cache_dtype,
                                                             expert_parallel=eng.enable_expert_parallel))
    else:
        profile = roofline_profile(sc.model, hw, eng.tensor_parallel_size, eng.kv_cache_dtype,
                                   expert_parallel=eng.enable_expert_parallel)
    # spec decode: sync only; PP: vLLM's V1 model runner turns async scheduling off (sim.config.check_pipeline)
    async_ = (eng.async_scheduling if eng.async_scheduling is not None
              else eng.scheduler != "vllm-v0" and eng.speculative_config is None and pp == 1)
    limits = SchedulerLimits(
        max_num_seqs=seqs, max_num_batched_tokens=mbt, max_model_len=max_model_len,
        enable_chunked_prefill=eng.enable_chunked_prefill,
        long_prefill_token_threshold=eng.long_prefill_token_threshold,
        scheduler_reserve_full_isl=eng.scheduler_reserve_full_isl, async_scheduling=async_,
        scheduling_policy=eng.scheduling_policy, pipeline_parallel_size=pp)
    price = float(hw.price_per_hour_usd) * eng.tensor_parallel_size * pp * eng.num_replicas
    return Deployment(hardware=hw, capacity=capacity, profile=profile, limits=limits, max_model_len=max_model_len,
                      kv_dtype=eng.kv_cache_dtype, async_scheduling=async_, num_replicas=eng.num_replicas,
                      price_per_hour_usd=price, stages=stages)


def build_replicas(sc: Scenario, dep: Deployment) -> list[Replica]:
    eng = sc.engine
    if eng.scheduler == "vllm-v0":
        return [_v0_replica(i, sc, dep) for i in range(dep.num_replicas)]
    reps = []
    for i in range(dep.num_replicas):
        kv: KVCacheManager | ContiguousKVManager
        if eng.allocator == "paged":
            kv = KVCacheManager(dep.capacity.num_gpu_blocks, eng.block_size, eng.enable_prefix_caching,
                                dep.max_model_len, eng.watermark or 0.0)
        else:
            try:
                kv = ContiguousKVManager(dep.capacity.num_gpu_blocks, eng.block_size, eng.allocator, dep.max_model_len)
            except ValueError as e:
                raise ScenarioError(sc.path, "engine.allocator", str(e)) from None
        spec = eng.speculative_config
        coster = StepCoster(dep.profile, eng.block_size, dep.kv_dtype, dep.capacity.block_bytes,
                            dep.async_scheduling, None if spec is None else proposer_cost(spec, sc, dep))
        if eng.kv_offloading_size is not None and isinstance(kv, KVCacheManager):
            from sim.kv_offload import offload_for
            kv.offload = offload_for(eng, coster, sc.model.num_layers)
        sched = SchedulerV1(dep.limits, kv, spec=None if spec is None else
                            SpecDecoder(spec, np.random.default_rng([sc.run.seed, SPEC_RNG_STREAM, i])))
        rep = Replica(i, sched, coster, dep.async_scheduling, sc.run.check_invariants)
        if dep.stages:
            rep.pipeline = pipeline_clock(sc, dep)
            rep.coster = replace(coster, profile=replace(dep.profile, step_overhead_s=0.0))   # GPU time only
        reps.append(rep)
    return reps


def pipeline_clock(sc: Scenario, dep: Deployment) -> PipelineClock:
    """A PP replica's stage clock: stage shares of the step's GPU time, the activation send
    between stages (NVLink within a node, InfiniBand across) and the per-batch CPU overhead."""
    eng = sc.engine
    tp, pp = eng.tensor_parallel_size, eng.pipeline_parallel_size
    send = transfer_s_per_token(sc.model, tp, stage_link_bytes_per_s(dep.hardware, tp, pp))
    shares = tuple(s.linear_share for s in dep.stages)
    return PipelineClock(shares, send if dep.profile.kind != "constant" else 0.0, dep.profile.step_overhead_s,
                         dep.stages)


def _v0_replica(index: int, sc: Scenario, dep: Deployment) -> Replica:
    eng = sc.engine
    watermark = 0.01 if eng.watermark is None else eng.watermark     # vLLM 0.8.5 CacheConfig default
    kv = BlockManagerV0(dep.capacity.num_gpu_blocks, dep.capacity.num_cpu_blocks, eng.block_size, watermark)
    sched = SchedulerV0(dep.limits, kv, eng.preemption_mode, sc.path, eng.swap_space)
    coster = StepCoster(dep.profile, eng.block_size, dep.kv_dtype, dep.capacity.block_bytes, False)
    return Replica(index, sched, coster, False, sc.run.check_invariants)
