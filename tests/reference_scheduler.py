"""A literal, O(batch)-per-step port of vLLM 0.32's v1 scheduler loop: the test oracle for
sim.scheduler_v1, whose decode-set bookkeeping must make exactly the same decisions.

It walks vLLM's running list request by request, as vllm/v1/core/sched/scheduler.py does, and
keeps every counter on the Request objects.  Only tests use it.
"""

from __future__ import annotations

from collections import deque

from sim.batch import StepBatch
from sim.kv_cache_manager import KVCacheManager
from sim.request import Request, Status
from sim.scheduler_v1 import SchedulerLimits, StepOutcome


class LiteralSchedulerV1:
    """Running list, waiting queue and the KV cache manager of one replica."""

    def __init__(self, limits: SchedulerLimits, kv: KVCacheManager):
        self.limits = limits
        self.kv = kv
        self.running: list[Request] = []
        self.waiting: deque[Request] = deque()
        self.num_preemptions = 0
        self._admit_counter = 0
        self._placeholders: dict[int, int] = {}    # async: req_id -> outstanding sampled tokens

    # ------------------------------------------------------------------ queue management
    def add_request(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting)

    def _num_new_tokens(self, req: Request) -> int:
        return req.num_prompt_tokens + req.num_output + self._placeholders.get(req.req_id, 0) - req.num_computed

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepBatch:
        lim = self.limits
        kv = self.kv
        batch = StepBatch()
        budget = lim.max_num_batched_tokens
        n_eligible = len(self.running) + len(self.waiting)
        threshold = lim.long_prefill_token_threshold if n_eligible > 1 else 0
        running = self.running
        placeholders = self._placeholders
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            ph = placeholders.get(req.req_id, 0)
            if ph > 0 and req.num_computed + 2 - ph >= req.num_prompt_tokens + req.max_tokens:
                i += 1          # async: its last token is already in flight
                continue
            n = req.num_prompt_tokens + req.num_output + ph - req.num_computed
            if 0 < threshold < n:
                n = threshold
            n = min(n, budget, lim.max_model_len - req.num_computed - 1)
            if n <= 0:
                i += 1
                continue
            ok = kv.allocate_slots(req, n)
            while not ok:
                victim = running.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is req:
                    break
                ok = kv.allocate_slots(req, n)
            if not ok:
                break
            batch.add(req, n)
            budget -= n
            i += 1

        if not batch.preempted:
            budget = self._admit_waiting(batch, budget, threshold)

        # _update_after_schedule: advance computed tokens; note who will sample a token
        samplers = batch.samplers
        async_ = lim.async_scheduling
        for req, n in batch.scheduled:
            req.num_computed += n
            ph = placeholders.get(req.req_id, 0)
            if req.num_computed >= req.num_prompt_tokens + req.num_output + ph:
                samplers.append(req)
                if async_:
                    placeholders[req.req_id] = ph + 1
        return batch

    def _admit_waiting(self, batch: StepBatch, budget: int, threshold: int) -> int:
        lim = self.limits
        kv = self.kv
        waiting = self.waiting
        while budget > 0 and waiting:
            if len(self.running) >= lim.max_num_seqs:
                break
            req = waiting[0]
            num_hits = 0
            hit_tokens = 0
            if req.num_computed == 0:
                num_hits, hit_tokens = kv.get_computed_blocks(req)
            n = req.num_prompt_tokens + req.num_output - hit_tokens - req.num_computed
            if 0 < threshold < n:
                n = threshold
            if not lim.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            if not kv.allocate_slots(req, n, hit_tokens, num_hits,
                                     full_sequence_must_fit=lim.scheduler_reserve_full_isl,
                                     has_scheduled_reqs=bool(self.running)):
                break
            kv.record_prefix_stats(req, hit_tokens)
            waiting.popleft()
            if req.prefix_hit_tokens < 0:
                req.prefix_hit_tokens = hit_tokens
            req.admit_seq = self._admit_counter
            self._admit_counter += 1
            self.running.append(req)
            req.status = Status.RUNNING
            req.num_computed += hit_tokens
            batch.admitted.append(req)
            batch.add(req, n)
            budget -= n
        return budget

    def _preempt(self, req: Request) -> None:
        """Preemption by recompute (v1 has no swap): free blocks, back to the front of waiting."""
        self.kv.free(req)
        req.status = Status.PREEMPTED
        req.num_computed = 0
        req.num_preemptions += 1
        self._placeholders.pop(req.req_id, None)
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ------------------------------------------------------------------ applying the output
    def update_from_output(self, batch: StepBatch) -> StepOutcome:
        """Append the sampled tokens of `batch`; finish requests that reached max_tokens.
        In async mode this runs after the *next* step was scheduled (the engine's order)."""
        first: list[Request] = []
        finished: list[Request] = []
        placeholders = self._placeholders
        async_ = self.limits.async_scheduling
        kv = self.kv
        stale_finished = False
        for req in batch.samplers:
            running = req.status is Status.RUNNING
            if async_ and running:
                ph = placeholders[req.req_id]
                if ph == 1:
                    del placeholders[req.req_id]
                else:
                    placeholders[req.req_id] = ph - 1
            req.num_output += 1
            if req.num_output == 1:
                first.append(req)
            if async_ and running and kv.enable_caching:
                kv.cache_blocks(req, req.num_computed - placeholders.get(req.req_id, 0))
            if req.num_output >= req.max_tokens:
                stale_finished |= not running
                req.status = Status.FINISHED
                finished.append(req)
        if finished:
            gone = set(id(r) for r in finished)
            self.running = [r for r in self.running if id(r) not in gone]
            if stale_finished:   # async: finished while preempted (its last token was in flight)
                self.waiting = deque(r for r in self.waiting if id(r) not in gone)
            for req in finished:
                kv.free(req)
        return StepOutcome(first, finished, sampled=batch.samplers)
