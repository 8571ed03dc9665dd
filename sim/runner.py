"""Run one scenario end to end: deployment, workload, simulation, summary.  No I/O here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np
import pandas as pd

from sim.admission import Admission
from sim.autoscaler import Autoscaler, AutoscalingConfig
from sim.block_hash import tokens_covered
from sim.config import Scenario
from sim.cost_model import StepCoster
from sim.deployment import Deployment, build_deployment, build_replicas
from sim.disaggregation import PrefillPoolSetup
from sim.engine import simulate
from sim.errors import ScenarioError
from sim.gc_batch import batched_gc
from sim.metrics import Recorder
from sim.requests_table import RequestTable, take
from sim.router import Router
from sim.schema import Ctx
from sim.session_table import end_long_sessions
from sim.spec_decode import spec_summary
from sim.summary import (
    class_summary,
    meets,
    offload_summary,
    request_table,
    session_summary,
    step_table,
    summarize,
)
from sim.workload import generate


@dataclass
class RunResult:
    summary: dict[str, Any]
    requests: pd.DataFrame
    steps: pd.DataFrame
    deployment: Deployment
    workload: RequestTable


def make_workload(sc: Scenario) -> RequestTable:
    rng = np.random.default_rng(sc.run.seed)
    table = generate(sc.workload, num_requests=sc.run.num_requests, duration_s=sc.run.duration_s,
                     rng=rng, ctx=Ctx(sc.path, "workload"))
    return table


def fit_lengths(sc: Scenario, dep: Deployment, table: RequestTable) -> tuple[RequestTable, int]:
    """Apply `run.on_too_long` to requests longer than max_model_len; (table, how many changed)."""
    if len(table) == 0 or sc.run.on_too_long == "error":
        return table, 0
    limit = min(dep.max_model_len, dep.capacity.num_usable_gpu_blocks * sc.engine.block_size)
    total = table.prompt_tokens + table.output_tokens
    over = total > limit
    k = int(over.sum())
    if not k:
        return table, 0
    if sc.run.on_too_long == "drop":
        return take(table, np.flatnonzero(~over)), k
    out = np.minimum(table.output_tokens, limit - 1)
    prompt = np.minimum(table.prompt_tokens, limit - out)
    segs = None
    if table.segments is not None:   # a truncated prompt keeps only what still fits of its segments
        covered = tokens_covered(table.segments)
        segs = [s if p >= c else () for s, p, c in zip(table.segments, prompt.tolist(), covered, strict=True)]
    return replace(table, prompt_tokens=prompt, output_tokens=out, segments=segs), k


def check_fits(sc: Scenario, dep: Deployment, table: RequestTable) -> None:
    """Refuse requests vLLM would refuse: longer than max_model_len or than the whole KV cache."""
    total = table.prompt_tokens + table.output_tokens
    if len(table) == 0:
        return
    i = int(np.argmax(total))
    if total[i] > dep.max_model_len:
        raise ScenarioError(sc.path, "workload", f"request {i} needs {int(total[i])} tokens (prompt {int(table.prompt_tokens[i])} "
                            f"+ output {int(table.output_tokens[i])}) but max_model_len is {dep.max_model_len}; "
                            "raise engine.max_model_len, cap workload.lengths or set run.on_too_long (drop | truncate)")
    cap = dep.capacity.num_usable_gpu_blocks * sc.engine.block_size
    if total[i] > cap:
        raise ScenarioError(sc.path, "engine", f"request {i} needs {int(total[i])} tokens but the KV cache holds only "
                            f"{cap} tokens; it could never be scheduled")


def routing_summary(router: Router, rec: Recorder, measured: np.ndarray) -> dict[str, Any]:
    """The router's policy, how evenly it spread the load, and each replica's prefix-hit rate."""
    done = measured & ~np.isnan(rec.finish_s)
    rates = []
    for k in range(len(router.routed)):
        on_k = done & (rec.replica == k)
        prompt = int(rec.prompt_tokens[on_k].sum())
        rates.append(float(rec.prefix_hit_tokens[on_k].sum() / prompt) if prompt else 0.0)
    return {"router": router.policy, "load_imbalance": router.load_imbalance(),
            "replica_requests": list(router.routed), "replica_prefix_cache_hit_rate": rates}


def autoscaling_summary(scaler: Autoscaler, rec: Recorder, measured: np.ndarray, sc: Scenario,
                        dep: Deployment) -> dict[str, Any]:
    """Replica-hours and the day's cost, the scaling timeline, and SLO attainment per tick window."""
    hours = scaler.billed_s / 3600.0
    price_per_replica = dep.price_per_hour_usd / max(dep.num_replicas, 1)
    tl = scaler.timeline
    edges = np.asarray([0.0, *tl.t_s, np.inf])
    done = measured & ~np.isnan(rec.finish_s)
    ttft = rec.first_token_s - rec.send_s
    e2el = rec.finish_s - rec.send_s
    slo = sc.slo
    good = np.zeros(len(done), dtype=bool)
    good[done] = _good_mask(ttft[done], e2el[done], rec.output_tokens[done], slo)
    window = np.searchsorted(edges, rec.send_s, side="right") - 1      # the tick window each request arrived in
    attain: list[float | None] = []
    for w in range(len(tl.t_s)):
        mine = measured & (window == w)
        attain.append(float(good[mine].sum() / mine.sum()) if mine.any() else None)
    return {"autoscaling_metric": scaler.cfg.metric, "replica_hours": hours,
            "fleet_cost_usd": hours * price_per_replica,
            "mean_replicas": scaler.billed_s / max(scaler.last_tick_s, 1e-12),
            "max_replicas_started": max(tl.started, default=0),
            "num_scale_ups": scaler.num_scale_ups, "num_scale_downs": scaler.num_scale_downs,
            "timeline_t_s": tl.t_s, "timeline_ready": tl.ready, "timeline_started": tl.started,
            "timeline_metric": tl.metric, "timeline_slo_attainment": attain}


def _good_mask(ttft_s: np.ndarray, e2el_s: np.ndarray, out_tok: np.ndarray, slo: Any) -> np.ndarray:
    return meets(ttft_s, e2el_s, out_tok, slo.ttft_ms, slo.tpot_ms, slo.e2el_ms)


def prefill_pool(sc: Scenario, num_decode: int) -> tuple[PrefillPoolSetup | None, float]:
    """The prefill pool of a disaggregated deployment (its own GPU type if asked) and its price."""
    pd = sc.engine.disaggregation
    if not pd.enabled:
        return None, 0.0
    hw = sc.hardware
    if pd.prefill_gpu is not None and pd.prefill_gpu != hw.gpu:
        hw = replace(hw, gpu=pd.prefill_gpu, profile=None)      # a profile was measured on the decode GPU
    p_sc = replace(sc, hardware=hw, engine=replace(sc.engine, num_replicas=pd.prefill_replicas,
                                                   autoscaling=AutoscalingConfig()))
    p_dep = build_deployment(p_sc)
    reps = build_replicas(p_sc, p_dep)
    for i, rep in enumerate(reps):
        rep.index = num_decode + i             # step-table rows: decode replicas first, then prefill
    router = Router(pd.prefill_router, len(reps), sc.engine.block_size, p_dep.capacity.num_gpu_blocks)
    per_rank = sc.model.kv_bytes_per_token(sc.engine.kv_cache_dtype, sc.engine.tensor_parallel_size)
    return PrefillPoolSetup(pd, reps, router.route, per_rank), p_dep.price_per_hour_usd


def run_scenario(sc: Scenario, table: RequestTable | None = None,
                 step_times_s: Sequence[float] | None = None) -> RunResult:
    """`step_times_s`: price the k-th step at the k-th of these seconds instead of the profile (a
    measured engine's steps replayed, `sim.validate.replay`); sync, one replica, every step an event.
    The garbage collector is batched meanwhile (`sim.gc_batch`)."""
    with batched_gc() as gcb:
        if table is None:
            with gcb.acyclic():
                table = make_workload(sc)
        return _run_scenario(sc, table, step_times_s)


def _run_scenario(sc: Scenario, table: RequestTable, step_times_s: Sequence[float] | None) -> RunResult:
    dep = build_deployment(sc)
    table, sessions_ended = end_long_sessions(   # a chat UI ends a conversation that no longer fits
        table, min(dep.max_model_len, dep.capacity.num_usable_gpu_blocks * sc.engine.block_size))
    table, num_too_long = fit_lengths(sc, dep, table)
    check_fits(sc, dep, table)
    replicas = build_replicas(sc, dep)
    eng = sc.engine
    router = Router(eng.router, len(replicas), eng.block_size, dep.capacity.num_gpu_blocks,
                    dict(eng.router_weights), eng.router_scrape_interval_s)
    admission = Admission(eng.admission) if eng.admission.policy != "none" else None
    scaler = Autoscaler(eng.autoscaling, len(replicas)) if eng.autoscaling.metric != "none" else None
    if scaler is not None:
        router.ready = scaler.ready
        if admission is not None:
            admission.ready = scaler.ready
    prefill, p_price = prefill_pool(sc, len(replicas))
    rec = Recorder(len(table), sc.run.record_steps)
    if step_times_s is not None:
        if len(replicas) != 1 or dep.async_scheduling:
            raise ValueError("replaying step times needs one replica and sync scheduling")
        from sim.validate.replay import StepReplay
        replicas[0].coster = cast(StepCoster, StepReplay(step_times_s, replicas[0].coster))
    end_s = simulate(table, replicas, router.route, rec, sc.run.max_sim_time_s,
                     scrape_interval_s=eng.router_scrape_interval_s, scrape=lambda: router.scrape(replicas),
                     admission=admission, autoscaler=scaler, quiet_stretches=step_times_s is None,
                     prefill=prefill)
    measured = np.ones(len(table), dtype=bool)
    if "session" in table.extra:      # rows in estimated send order: the first N *sent* are the warm-up
        if sc.run.warmup_requests:
            measured[np.argsort(rec.send_s, kind="stable")[: sc.run.warmup_requests]] = False
    else:
        measured[: sc.run.warmup_requests] = False
    if sc.run.warmup_s > 0:
        measured &= np.where(np.isnan(table.arrival_s), rec.send_s, table.arrival_s) >= sc.run.warmup_s
    summary = summarize(rec, measured, sc.slo, end_s)
    cap = dep.capacity
    summary.update({
        "scenario": sc.name, "model": sc.model.name, "gpu": dep.hardware.name,
        "num_gpu_blocks": int(cap.num_gpu_blocks), "num_cpu_blocks": int(cap.num_cpu_blocks),
        "block_size": sc.engine.block_size, "kv_cache_dtype": sc.engine.kv_cache_dtype,
        "max_concurrent_tokens": int(cap.max_concurrent_tokens),
        "max_num_seqs": dep.limits.max_num_seqs, "max_num_batched_tokens": dep.limits.max_num_batched_tokens,
        "tensor_parallel_size": sc.engine.tensor_parallel_size, "num_replicas": sc.engine.num_replicas,
        "pipeline_parallel_size": sc.engine.pipeline_parallel_size,
        "scheduler": sc.engine.scheduler, "async_scheduling": dep.async_scheduling,
        "cost_profile": dep.profile.kind, "price_per_hour_usd": dep.price_per_hour_usd,
        "simulated_time_s": end_s, "seed": sc.run.seed, "workload_source": table.source,
        "num_requests": len(table), "num_too_long": num_too_long, "on_too_long": sc.run.on_too_long,
    })
    summary.update(routing_summary(router, rec, measured))
    if eng.speculative_config is not None:
        summary.update(spec_summary([r.scheduler.spec for r in replicas]))
    if dep.stages:
        from sim import pipeline
        summary.update(pipeline.summary([r.pipeline for r in replicas]))
    summary.update(offload_summary(replicas, end_s))
    summary["admission"] = eng.admission.policy
    if scaler is not None:
        summary.update(autoscaling_summary(scaler, rec, measured, sc, dep))
    classes = sc.workload.classes
    if classes and "slo_class" in table.extra:
        summary["classes"] = class_summary(rec, measured, sc.slo, classes, table.extra["slo_class"], summary["duration"])
    if prefill is not None:
        tr = np.asarray(rec.kv_transfer_s) * 1000.0
        summary.update({"prefill_replicas": len(prefill.replicas), "decode_replicas": len(replicas),
                        "prefill_gpu": prefill.cfg.prefill_gpu or dep.hardware.name, "kv_link": prefill.cfg.link,
                        "num_disaggregated": int(tr.size),
                        "mean_kv_transfer_ms": float(tr.mean()) if tr.size else 0.0,
                        "p99_kv_transfer_ms": float(np.percentile(tr, 99)) if tr.size else 0.0})
        summary["price_per_hour_usd"] = dep.price_per_hour_usd + p_price
    if "session" in table.extra:
        summary.update(session_summary(rec, measured, table.extra["session"], table.extra["turn"]))
        summary["num_sessions_ended_at_max_model_len"] = sessions_ended
    if summary.get("output_throughput"):
        summary["usd_per_million_output_tokens"] = summary["price_per_hour_usd"] / 3600.0 / summary["output_throughput"] * 1e6
    requests = request_table(rec, measured)
    for col in ("session", "turn"):
        if col in table.extra:
            requests[col] = table.extra[col]
    return RunResult(summary, requests, step_table(rec), dep, table)
