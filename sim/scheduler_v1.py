"""vLLM v1's scheduler (`vllm-v1`), decision for decision, with no SimPy and no time.

Followed: vLLM 0.32, vllm/v1/core/sched/scheduler.py `Scheduler.schedule`,
`_preempt_request`, `_update_after_schedule`, `update_from_output`, and
vllm/v1/core/sched/async_scheduler.py `AsyncScheduler`.  One step:

1. RUNNING requests, in running-list order, each get
   `min(num_tokens + placeholders - num_computed, long_prefill_token_threshold?, budget left)`
   tokens (the threshold applies only when more than one request is running or waiting).  When
   the KV cache cannot hold a request's tokens, the *last* running request is preempted
   (recompute: blocks freed tail first, `num_computed = 0`, back to the *front* of the waiting
   queue) until the allocation fits; if the victim is the request itself the loop stops.  With
   `scheduling_policy: priority` the victim is the first running request with the largest
   (priority, arrival time), and one already scheduled this step gives its tokens back.
2. WAITING requests are admitted only if nothing was preempted this step, in FCFS order (or
   (priority, arrival) order: `PriorityWaiting`), while budget is left and fewer than `max_num_seqs` run: a prefix-cache lookup (first admission or after
   preemption), then the whole remaining sequence is scheduled (a chunk with chunked prefill;
   without it, a prompt larger than the budget left stops admission), and with
   `scheduler_reserve_full_isl` the whole sequence must fit in the free blocks.
3. After the step, every request whose computed tokens reached its sequence end samples one
   token; a request reaching `max_tokens` finishes and frees its blocks (tail first).

Async scheduling (vLLM's GPU default): the engine schedules step k+1 before applying step k's
output.  Requests carry output placeholders for tokens in flight, so they decode again at once;
a request whose last token is in flight is skipped; finished requests free their blocks one step
later; a request preempted while its token was in flight still receives that token.

Speed without approximation: a request that decodes one token per step joins the *decode set*,
where its counters are implicit in the step clock (`computed = base_computed + clock -
base_clock`, `output = base_output + upd - base_upd`).  Calendars keyed by clock value say
when a member needs its next block, fills a block (prefix caching) or finishes, so a step costs
Python work only for requests where something happens.  A member that will not get exactly one
token in a step leaves the set first; a step whose token budget does not cover everyone falls
back to the literal running-list loop.  tests/test_scheduler_v1.py checks the result against a
literal port step by step.

Speculative decoding (`spec`, sim.spec_decode; synchronous scheduling only): nobody joins the
decode set (a member's counters advance one token per step, a verifying request's by
`accepted + 1`), so every running request is explicit and quiet stretches never start.  A
request that sampled carries k drafts (`num_spec_tokens`); it is scheduled for `1 + drafts` tokens (cut
by the budget and max_model_len like any demand) with KV slots for `num_lookahead_tokens` more;
`update_from_output` draws the accepted drafts, rolls `num_computed` back by the rejected ones
(their blocks stay, as in vLLM) and hands the request `accepted + 1` tokens, at most what it
still needs.  Followed: vLLM 0.32 `Scheduler.schedule` (num_tokens_with_spec,
scheduled_spec_decode_tokens), `update_from_output` (num_rejected), `update_draft_token_ids`.

Beside this module, as functions of the scheduler: the running requests' demands, blocks and
preemption (`sim.scheduler_running`), the decode set and its calendars
(`sim.decode_set`), speculative decoding's steps
(`sim.scheduler_spec`), quiet stretches (`sim.scheduler_quiet`), pipeline-parallel lanes
(`sim.scheduler_lanes`), loads from the KV offload tiers (`sim.scheduler_loads`); the priority
waiting queue is `sim.waiting_queue`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from sim.batch import StepBatch, StepOutcome
from sim.contiguous import ContiguousKVManager
from sim.decode_set import join, leave, push_finish, take
from sim.kv_cache_manager import KVCacheManager
from sim.kv_offload import KVOffload
from sim.kv_state import KVState
from sim.request import Request, Status, admit_seq_of, admit_seq_of_pair
from sim.scheduler_lanes import Lane, load_lane, load_ready_lane, save_lane
from sim.scheduler_loads import finish_loads, start_load
from sim.scheduler_running import (
    allocate_lookahead,
    demand,
    schedule_running_literal,
    schedule_running_regular,
)
from sim.scheduler_spec import schedule_spec, update_from_output_spec
from sim.spec_runtime import SpecDecoder
from sim.waiting_queue import PriorityWaiting


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The engine options the v1 scheduler reads (vLLM SchedulerConfig / CacheConfig names)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    scheduler_reserve_full_isl: bool = True
    async_scheduling: bool = False
    scheduling_policy: str = "fcfs"          # fcfs | priority (vLLM --scheduling-policy)
    pipeline_parallel_size: int = 1          # > 1: up to this many batches in flight (sim.pipeline)


class SchedulerV1:
    """Running list, waiting queue and the KV cache manager of one replica."""

    def __init__(self, limits: SchedulerLimits, kv: KVCacheManager | ContiguousKVManager, record_schedule: bool = False,
                 spec: SpecDecoder | None = None, pp_lanes: bool = True):
        self.limits = limits
        self.spec = spec                         # speculative decoding (None: off)
        self.lookahead: int = spec.num_lookahead_tokens if spec is not None else 0
        assert spec is None or not (limits.async_scheduling or limits.pipeline_parallel_size > 1), \
            "speculative decoding is simulated with synchronous scheduling and no PP (sim.config refuses the rest)"
        if spec is not None and isinstance(kv, KVCacheManager):
            kv.spec_slack_tokens = 2 * spec.k    # 1 + k verified from num_tokens - 1, + k lookahead
        self.kv = kv
        self.record_schedule = record_schedule
        self.running_map: dict[int, Request] = {}   # vLLM's running list: insertion order
        self.explicit: dict[int, Request] = {}      # running requests outside the decode set
        self.priority = limits.scheduling_policy == "priority"
        self.waiting: deque[Request] | PriorityWaiting = PriorityWaiting() if self.priority else deque()
        self.num_preemptions = 0
        self.clock = 0                 # steps scheduled so far
        self.upd = 0                   # clock value of the last applied step
        # spec decode: the explicit requests' computed tokens as schedule_spec left them, valid
        # while the clock is explicit_computed_clock and that step is not yet applied (kv_state)
        self.explicit_computed = 0
        self.explicit_computed_clock = -1
        self.num_members = 0
        self.members_base = 0          # sum of (base_computed - base_clock) over members
        self.alloc_due: dict[int, list[tuple[Request, int]]] = {}
        self.finish_due: dict[int, list[tuple[Request, int]]] = {}
        self.finish_keys: list[int] = []       # heap of finish_due keys (lazy: may hold popped keys)
        self.inflight: list[StepBatch] = []
        self.last_update_s = 0.0
        self._seq = 0
        # PP > 1: decode sets per cohort (`Lane`); pp_lanes=False keeps every request explicit
        # (the slow literal reference the lanes are tested against)
        self.pp = limits.pipeline_parallel_size > 1
        self.lanes_on = self.pp and pp_lanes
        self.lane = Lane()                              # the lane loaded in the fields above
        self.ready_lanes: list[Lane] = []               # lanes whose batch was applied
        self.lane_of: dict[int, Lane] = {}              # member req_id -> its lane
        self.lane_inflight: list[tuple[StepBatch, Lane]] = []
        # KV offloading (sim.kv_offload): requests whose hit is being loaded from the CPU / disk
        # tiers (vLLM's WAITING_FOR_REMOTE_KVS), a heap of (ready time, seq, request); the engine
        # sets `now_s` before each `schedule()`.
        self.offload: KVOffload | None = kv.offload if isinstance(kv, KVCacheManager) else None
        self.loading: list[tuple[float, int, Request]] = []
        self.now_s = 0.0
        # a finishing quiet stretch (`sim.scheduler_quiet.quiet_steps(through_finish=True)`): its last clock value and
        # the leavers' share of the decode set's shape
        self.quiet_finish_key = -1
        self.quiet_leave_members = 0
        self.quiet_leave_base = 0

    # ------------------------------------------------------------------ queues and views
    def add_request(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    @property
    def running(self) -> list[Request]:
        return list(self.running_map.values())

    @property
    def num_running(self) -> int:
        return len(self.running_map)

    @property
    def has_work(self) -> bool:
        return bool(self.running_map or self.waiting or self.loading)

    @property
    def num_unfinished(self) -> int:
        return len(self.running_map) + len(self.waiting) + len(self.loading)

    def kv_state(self) -> KVState:
        computed = self.members_base + self.num_members * self.clock
        if self.explicit_computed_clock == self.clock and self.upd != self.clock:
            return self.kv.state_fractions(computed + self.explicit_computed)   # (spec: no lanes)
        if self.lanes_on:
            computed = 0
            for lane in self.ready_lanes:
                computed += lane.members_base + lane.num_members * lane.clock
            for _, lane in self.lane_inflight:
                computed += lane.members_base + lane.num_members * lane.clock
        for r in self.explicit.values():
            computed += r.num_computed
        return self.kv.state_fractions(computed)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepBatch:
        if self.spec is not None:
            return schedule_spec(self)
        lim = self.limits
        batch = StepBatch()
        if self.lanes_on:
            load_ready_lane(self)
        c = self.clock
        budget = lim.max_num_batched_tokens
        if self.loading:
            finish_loads(self)
        thr = lim.long_prefill_token_threshold if len(self.running_map) + len(self.waiting) > 1 else 0
        if lim.async_scheduling:      # members whose last token is in flight are skipped
            for r, v in self.finish_due.get(c, ()):
                if r.version == v and r.in_decode_set:
                    leave(self, r)
                    push_finish(self, c, r)
        demands: list[tuple[Request, int]] = []
        total = self.num_members
        for r in self.explicit.values():
            d = demand(self, r, thr)
            if d > 0:
                demands.append((r, d))
                total += d
        if total > budget:
            demands = schedule_running_literal(self, batch, budget, thr)
        else:
            demands = schedule_running_regular(self, batch, demands)
        budget -= sum(d for _, d in demands) + self.num_members
        # shape of the decode set (members computed = base + c - base_clock; attend to +1)
        dm = self.num_members
        batch.num_decode_tokens += dm
        batch.decode_ctx_tokens += self.members_base + dm * c + dm
        if self.record_schedule:
            sched = [(r, 1) for r in self.running_map.values()
                     if r.in_decode_set and (not self.lanes_on or self.lane_of[r.req_id] is self.lane)] + demands
            sched.sort(key=admit_seq_of_pair)
            batch.scheduled.extend(sched)
        for r, d in demands:
            batch.add_shape(d, r.num_computed)
        if not batch.preempted:
            demands += self._admit_waiting(batch, budget, thr)
        # _update_after_schedule
        batch.num_members = dm
        self.clock = c + 1
        async_ = lim.async_scheduling
        # PP: a request in flight waits for its output (its demand is 0 until then), so requests
        # sample every few steps and stay out of the decode set, whose counters advance every step
        pp = lim.pipeline_parallel_size > 1
        for r, d in demands:
            r.num_computed += d
            if r.num_computed >= r.num_prompt_tokens + r.num_output + r.ph:
                batch.samplers.append(r)
                if async_:
                    r.ph += 1
                if not pp or self.lanes_on:
                    join(self, r)
        batch.clock_after = self.clock
        self.inflight.append(batch)
        if self.lanes_on:
            save_lane(self, self.lane)
            self.lane_inflight.append((batch, self.lane))
        return batch

    def _admit_waiting(self, batch: StepBatch, budget: int, thr: int) -> list[tuple[Request, int]]:
        lim = self.limits
        kv = self.kv
        waiting = self.waiting
        out: list[tuple[Request, int]] = []
        while budget > 0 and waiting:
            if len(self.running_map) >= lim.max_num_seqs:
                break
            req = waiting[0]
            if lim.pipeline_parallel_size > 1 and self._stale_in_flight(req):
                break      # vLLM: a preempted request's token still in flight drains first
            num_hits = 0                   # prefix-hit blocks, written into req's table
            hit_tokens = 0
            if req.num_computed == 0:
                num_hits, hit_tokens = kv.get_computed_blocks(req)
                if self.offload is not None:
                    keys, n_cpu, n_disk = kv.offload_lookup(req, hit_tokens)  # type: ignore[union-attr]
                    if n_cpu + n_disk:
                        if not start_load(self, req, num_hits, hit_tokens, keys, n_cpu, n_disk):
                            break
                        continue
            n = req.num_prompt_tokens + req.num_output - hit_tokens - req.num_computed
            if 0 < thr < n:
                n = thr
            if not lim.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            if self.lookahead:
                ok = allocate_lookahead(self, req, n, hit_tokens, num_hits, lim.scheduler_reserve_full_isl)
            else:
                ok = kv.allocate_slots(req, n, hit_tokens, num_hits, full_sequence_must_fit=lim.scheduler_reserve_full_isl,
                                       has_scheduled_reqs=bool(self.running_map))
            if not ok:
                break
            kv.record_prefix_stats(req, hit_tokens)
            waiting.popleft()
            if req.prefix_hit_tokens < 0:
                req.prefix_hit_tokens = hit_tokens
            req.status = Status.RUNNING
            req.num_computed += hit_tokens
            req.admit_seq = self._seq
            self._seq += 1
            self.running_map[req.req_id] = req
            self.explicit[req.req_id] = req
            batch.admitted.append(req)
            batch.admitted_hits.append(hit_tokens)
            batch.add_shape(n, req.num_computed)
            if self.record_schedule:
                batch.scheduled.append((req, n))
            out.append((req, n))
            budget -= n
        return out

    def _stale_in_flight(self, req: Request) -> bool:
        for b in self.inflight:
            for r in b.stale:
                if r is req:
                    return True
        return False

    # ------------------------------------------------------------------ applying the output
    def update_from_output(self, batch: StepBatch, now_s: float = 0.0) -> StepOutcome:
        """Apply the tokens sampled by `batch`; finish requests that reached max_tokens.
        In async mode the engine calls this after the *next* step was scheduled."""
        if self.spec is not None:
            return update_from_output_spec(self, batch, now_s)
        self.inflight.remove(batch)
        lane: Lane | None = None
        if self.lanes_on:
            for i, (b, ln) in enumerate(self.lane_inflight):
                if b is batch:
                    lane = ln
                    del self.lane_inflight[i]
                    break
            assert lane is not None
            load_lane(self, lane)
        self.upd = batch.clock_after
        self.last_update_s = now_s
        first: list[Request] = []
        finished: list[Request] = []
        gaps: list[float] = []
        async_ = self.limits.async_scheduling
        to_finish: list[Request] = []
        for r in batch.samplers:
            if r.status is not Status.RUNNING:
                continue                        # preempted meanwhile: handled as stale below
            if r.in_decode_set:
                out = r.base_output + self.upd - r.base_upd
            else:
                r.num_output += 1
                if async_:
                    r.ph -= 1
                out = r.num_output
            if r.last_token_s >= 0.0:
                gaps.append(now_s - r.last_token_s)
            r.last_token_s = now_s
            if out == 1:
                first.append(r)
            if async_ and self.kv.enable_caching and not r.in_decode_set:
                self.kv.cache_blocks(r, r.num_prompt_tokens + out - 1)
            if out >= r.max_tokens:
                to_finish.append(r)
        for r, was_member in zip(batch.stale, batch.stale_members, strict=True):
            r.num_output += 1
            if not was_member and r.last_token_s >= 0.0:
                gaps.append(now_s - r.last_token_s)
            r.last_token_s = now_s
            if r.num_output == 1:
                first.append(r)
            if r.num_output >= r.max_tokens and r.status is not Status.FINISHED:
                r.status = Status.FINISHED
                finished.append(r)
                if isinstance(self.waiting, PriorityWaiting):
                    self.waiting.remove(r)
                else:
                    self.waiting = deque(w for w in self.waiting if w is not r)
        for r, v in take(self.finish_due, self.upd) or ():
            if r.version == v and r.status is Status.RUNNING:
                to_finish.append(r)
        if len(to_finish) > 1:                  # vLLM frees in scheduling (running-list) order
            to_finish.sort(key=admit_seq_of)
        for r in to_finish:
            if r.status is Status.RUNNING:
                self._finish(r, finished)
        if lane is not None:
            save_lane(self, lane)
            if lane.num_members:
                self.ready_lanes.append(lane)
        ntok = len(batch.samplers) + batch.num_members
        return StepOutcome(first, finished, itl_gaps_s=np.asarray(gaps) if gaps else None,
                           num_uniform_gaps=batch.num_members, num_tokens=ntok)

    def _finish(self, r: Request, finished: list[Request]) -> None:
        if r.in_decode_set:
            leave(self, r)
        if self.limits.async_scheduling and self.kv.enable_caching:
            self.kv.cache_blocks(r, r.num_prompt_tokens + r.max_tokens - 1)
        r.num_output = r.max_tokens
        r.status = Status.FINISHED
        del self.running_map[r.req_id]
        del self.explicit[r.req_id]
        self.kv.free(r)
        finished.append(r)
