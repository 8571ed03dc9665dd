"""pagesim's side of the step-clock conformance run: the same job, the same loop, pagesim's scheduler.

Mirrors `vllm_driver.run_job` line for line (arrivals joined before the step that follows them,
the idle jump to the next arrival, the batch queue of depth 1 or 2 for async scheduling, empty
steps left out) so that the two traces differ only where the schedulers decide differently.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from sim.batch import StepBatch
from sim.kv_cache_manager import KVCacheManager
from sim.request import Request
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1
from sim.validate.step_trace import StepRecord, TraceHeader
from sim.validate.vllm_driver import load_job


def build_scheduler(config: dict[str, Any]) -> SchedulerV1:
    limits = SchedulerLimits(
        max_num_seqs=int(config["max_num_seqs"]), max_num_batched_tokens=int(config["max_num_batched_tokens"]),
        max_model_len=int(config["max_model_len"]), enable_chunked_prefill=bool(config["enable_chunked_prefill"]),
        long_prefill_token_threshold=int(config["long_prefill_token_threshold"]),
        scheduler_reserve_full_isl=bool(config["scheduler_reserve_full_isl"]),
        async_scheduling=bool(config["async_scheduling"]), scheduling_policy=str(config.get("policy", "fcfs")))
    kv = KVCacheManager(int(config["num_gpu_blocks_override"]), int(config["block_size"]),
                        bool(config["enable_prefix_caching"]), int(config["max_model_len"]),
                        float(config.get("watermark", 0.0)))
    return SchedulerV1(limits, kv, record_schedule=True)


def make_requests(r: dict[str, Any], index: int, sched: SchedulerV1, names: dict[int, str],
                  next_id: list[int]) -> list[Request]:
    """pagesim Requests for one job request: itself, or its n children (named as vLLM names them)."""
    n = int(r.get("n", 1))
    segs = tuple((int(s), int(k)) for s, k in r.get("segments", ()))
    ids = [r["id"]] if n == 1 else [f"{i}_{r['id']}" for i in range(n)]
    if n > 1:
        assert isinstance(sched.kv, KVCacheManager)
        sched.kv.shared_content.add(index)   # siblings share every prompt block
    out = []
    for name in ids:
        rid = next_id[0]
        next_id[0] += 1
        names[rid] = name
        out.append(Request(rid, r["_arrival_s"], r["_n_prompt"], int(r["max_tokens"]), segs,
                           content_key=index, parent_id=rid, priority=int(r.get("priority", 0))))
    return out


def run_job(job: dict[str, Any]) -> tuple[TraceHeader, list[StepRecord]]:
    config, step_s, pending = load_job(job)
    t0 = time.perf_counter()
    sched = build_scheduler(config)
    names: dict[int, str] = {}
    next_id = [0]
    queue: deque[StepBatch] = deque()
    queue_size = 2 if config["async_scheduling"] else 1
    assert isinstance(sched.kv, KVCacheManager)
    pool = sched.kv.pool
    records: list[StepRecord] = []
    step, nxt = 0, 0
    while nxt < len(pending) or sched.has_work or queue:
        if not (sched.has_work or queue):
            step = max(step, pending[nxt]["_step"])
        while nxt < len(pending) and pending[nxt]["_step"] <= step:
            for req in make_requests(pending[nxt], pending[nxt]["_order"], sched, names, next_id):
                sched.add_request(req)
            nxt += 1
        scheduled: dict[str, int] = {}
        hits: dict[str, int] = {}
        preempted: list[str] = []
        finished: list[str] = []
        executed = False
        if sched.has_work:
            batch = sched.schedule()
            scheduled = {names[r.req_id]: n for r, n in batch.scheduled}
            admitted = {names[r.req_id]: h for r, h in zip(batch.admitted, batch.admitted_hits, strict=True)}
            hits = {rid: admitted[rid] for rid in scheduled if rid in admitted}
            preempted = [names[r.req_id] for r in batch.preempted]
            queue.appendleft(batch)
            executed = batch.num_tokens > 0
        if queue and (len(queue) >= queue_size or not (executed or sched.has_work)):
            out = sched.update_from_output(queue.pop(), step * step_s)
            finished = [names[r.req_id] for r in out.finished]
        rec = StepRecord(step=step, clock_s=step * step_s, scheduled=scheduled, preempted=preempted,
                         finished=finished, num_free_blocks=pool.num_free_blocks, kv_cache_usage=pool.usage,
                         num_running=sched.num_running, num_waiting=len(sched.waiting), new_prefix_hits=hits)
        if not rec.is_empty:
            records.append(rec)
        step += 1
    stats = {"run_s": round(time.perf_counter() - t0, 3), "num_engine_steps": step}
    return TraceHeader(source="pagesim", step_s=step_s, config=config, stats=stats), records
