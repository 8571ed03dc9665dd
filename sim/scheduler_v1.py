"""vLLM v1's scheduler (`vllm-v1`), decision for decision, with no SimPy and no time.

Followed: vLLM 0.32, vllm/v1/core/sched/scheduler.py `Scheduler.schedule`,
`_preempt_request`, `_update_after_schedule`, `update_from_output`, and
vllm/v1/core/sched/async_scheduler.py `AsyncScheduler`.  One step:

1. RUNNING requests, in running-list order, each get
   `min(num_tokens + placeholders - num_computed, long_prefill_token_threshold?, budget left)`
   tokens (the threshold applies only when more than one request is running or waiting); once the
   budget is spent the rest get nothing.  When the KV cache cannot hold a request's tokens, the
   *last* running request is preempted (recompute: blocks freed tail first, `num_computed = 0`,
   back to the *front* of the waiting queue) until the allocation fits; if the victim is the
   request itself, the loop stops.
2. WAITING requests are admitted only if nothing was preempted this step, FCFS, while budget is
   left and fewer than `max_num_seqs` run: a prefix-cache lookup (first admission or after
   preemption), then the whole remaining sequence is scheduled (a chunk of it with chunked
   prefill; without it, a prompt larger than the budget left stops admission), and with
   `scheduler_reserve_full_isl` the whole sequence must fit in the free blocks.
3. After the step, every request whose computed tokens reached its sequence end samples one
   token; a request reaching `max_tokens` finishes and frees its blocks (tail first).

Async scheduling (vLLM's GPU default): the engine schedules step k+1 before applying step k's
output.  A request then carries one output placeholder per token in flight, so it is scheduled
to decode again at once; a request whose last token is already in flight is skipped; blocks of
finished requests return to the pool one step later; a request preempted while its token was in
flight still receives that token.

The running list is columnar (`sim.running_batch`): step 1 is computed with vector operations
(the budget rule is a clipped prefix sum), and Python touches only requests that need a new
block, cache a full block, are preempted, admitted, or produce a first or last token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from sim.batch import StepBatch
from sim.kv_cache_manager import KVCacheManager
from sim.request import Request, Status
from sim.running_batch import RunningBatch


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


@dataclass(slots=True)
class StepOutcome:
    """What applying one step's output changed."""

    first_tokens: list[Request]
    finished: list[Request]
    sampled: list[Request] = field(default_factory=list)   # object-style schedulers only
    itl_gaps_s: np.ndarray | None = None                    # gaps between tokens (not first tokens)
    num_tokens: int = 0                                     # tokens produced this step


class SchedulerV1:
    """Running list, waiting queue and the KV cache manager of one replica."""

    def __init__(self, limits: SchedulerLimits, kv: KVCacheManager, record_schedule: bool = False):
        self.limits = limits
        self.kv = kv
        self.rb = RunningBatch(max(limits.max_num_seqs, 1))
        self.waiting: deque[Request] = deque()
        self.num_preemptions = 0
        self.record_schedule = record_schedule   # fill batch.scheduled (conformance traces, tests)

    # ------------------------------------------------------------------ queues
    def add_request(self, req: Request) -> None:
        req.status = Status.WAITING
        self.waiting.append(req)

    @property
    def running(self) -> list[Request]:
        return self.rb.slots

    @property
    def has_work(self) -> bool:
        return bool(self.rb.n or self.waiting)

    @property
    def num_unfinished(self) -> int:
        return self.rb.n + len(self.waiting)

    def sync(self) -> None:
        """Write the columnar counters back into the Request objects (tests, debugging)."""
        self.rb.sync_all()

    def kv_state(self) -> tuple[float, float, float, float, float]:
        """(usage, token-state, internal-fragmentation, reserved, cached-free) fractions."""
        return self.kv.state_fractions(int(self.rb.computed[: self.rb.n].sum()))

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepBatch:
        lim = self.limits
        kv = self.kv
        rb = self.rb
        batch = StepBatch()
        budget = lim.max_num_batched_tokens
        threshold = lim.long_prefill_token_threshold if rb.n + len(self.waiting) > 1 else 0
        n = rb.n
        sched = None
        if n:
            sched = self._schedule_running(batch, budget, threshold)
            n = rb.n
            budget -= int(sched.sum())
        if not batch.preempted:
            self._admit_waiting(batch, budget, threshold)
        # _update_after_schedule for the running part (admissions were handled on admission)
        if sched is not None and n:
            comp = rb.computed[:n]
            ph = rb.ph[:n]
            comp += sched
            samp = (sched > 0) & (comp >= rb.num_tokens[:n] + ph)
            idx = np.flatnonzero(samp)
            if lim.async_scheduling:
                ph += samp
        else:
            idx = np.zeros(0, dtype=np.int64)
        if batch.admitted:
            first_new = rb.n - len(batch.admitted)
            new_idx = [first_new + k for k, r in enumerate(batch.admitted)
                       if rb.computed[first_new + k] >= rb.num_tokens[first_new + k]]
            if lim.async_scheduling and new_idx:
                rb.ph[new_idx] += 1
            if new_idx:
                idx = np.concatenate([idx, np.asarray(new_idx, dtype=np.int64)])
        batch.sampler_idx = idx
        batch.low = rb.n
        rb.open_batches.append(batch)
        return batch

    def _schedule_running(self, batch: StepBatch, budget: int, threshold: int) -> np.ndarray:
        lim = self.limits
        kv = self.kv
        rb = self.rb
        n = rb.n
        bs = kv.block_size
        comp = rb.computed[:n]
        ph = rb.ph[:n]
        demand = rb.num_tokens[:n] + ph - comp
        if lim.async_scheduling:
            done = (ph > 0) & (comp + 2 - ph >= rb.prompt[:n] + rb.max_tokens[:n])
            if done.any():
                demand[done] = 0
        if threshold > 0:
            np.minimum(demand, threshold, out=demand)
        np.minimum(demand, lim.max_model_len - 1 - comp, out=demand)
        np.maximum(demand, 0, out=demand)
        before = np.cumsum(demand) - demand
        sched = np.minimum(demand, np.maximum(budget - before, 0))
        need = (comp + sched + (bs - 1)) // bs - rb.nblocks[:n]
        need[sched == 0] = 0
        due = np.flatnonzero(need > 0)
        if due.size:
            pool = kv.pool
            slots = rb.slots
            if int(need[due].sum()) <= len(pool.free):
                for i in due.tolist():
                    k = int(need[i])
                    slots[i].block_ids.extend(pool.get_new_blocks(k))
                    rb.nblocks[i] += k
                    kv.num_blocks_held += k
            else:
                self._allocate_with_preemption(batch, due, need)
                n = rb.n
                sched = sched[:n]
                comp = rb.computed[:n]
        if kv.enable_caching and n:
            upto = np.minimum(comp + sched, rb.num_tokens[:n])
            full = upto // bs
            for i in np.flatnonzero((full > rb.ncached[:n]) & (sched > 0)).tolist():
                kv.cache_blocks(rb.slots[i], int(upto[i]))
                rb.ncached[i] = rb.slots[i].num_cached_blocks
        # batch shape
        dec = sched == 1
        nd = int(np.count_nonzero(dec))
        batch.num_decode_tokens += nd
        if nd:
            batch.decode_ctx_tokens += int(comp[dec].sum()) + nd
        pre = sched > 1
        if pre.any():
            q = sched[pre]
            batch.num_prefill_tokens += int(q.sum())
            batch.num_prefill_seqs += int(q.size)
            batch.prefill_pairs += float((q * (comp[pre] + (q + 1) / 2)).sum())
        if self.record_schedule:
            for i in np.flatnonzero(sched).tolist():
                batch.scheduled.append((rb.slots[i], int(sched[i])))
        return sched

    def _allocate_with_preemption(self, batch: StepBatch, due: np.ndarray, need: np.ndarray) -> None:
        """vLLM's allocate-or-preempt-the-tail loop, for the requests that need blocks, in order."""
        kv = self.kv
        rb = self.rb
        pool = kv.pool
        for i in due.tolist():
            if i >= rb.n:
                break                          # already preempted as a tail victim
            k = int(need[i])
            gave_up = False
            while len(pool.free) < k:
                victim_pos = rb.n - 1
                victim = rb.pop()
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim_pos == i:
                    gave_up = True
                    break
            if gave_up:
                break
            rb.slots[i].block_ids.extend(pool.get_new_blocks(k))
            rb.nblocks[i] += k
            kv.num_blocks_held += k

    def _admit_waiting(self, batch: StepBatch, budget: int, threshold: int) -> None:
        lim = self.limits
        kv = self.kv
        rb = self.rb
        waiting = self.waiting
        while budget > 0 and waiting:
            if rb.n >= lim.max_num_seqs:
                break
            req = waiting[0]
            hit_blocks: list[int] = []
            hit_tokens = 0
            if req.num_computed == 0:
                hit_blocks, hit_tokens = kv.get_computed_blocks(req)
            n = req.num_prompt_tokens + req.num_output - hit_tokens - req.num_computed
            if 0 < threshold < n:
                n = threshold
            if not lim.enable_chunked_prefill and n > budget:
                break
            n = min(n, budget)
            if not kv.allocate_slots(req, n, hit_tokens, hit_blocks,
                                     full_sequence_must_fit=lim.scheduler_reserve_full_isl,
                                     has_scheduled_reqs=rb.n > 0):
                break
            kv.record_prefix_stats(req, hit_tokens)
            waiting.popleft()
            if req.prefix_hit_tokens < 0:
                req.prefix_hit_tokens = hit_tokens
            req.status = Status.RUNNING
            req.num_computed += hit_tokens
            batch.admitted.append(req)
            batch.add_shape(n, req.num_computed)
            if self.record_schedule:
                batch.scheduled.append((req, n))
            req.num_computed += n              # _update_after_schedule
            rb.append(req)
            budget -= n

    def _preempt(self, req: Request) -> None:
        """Preemption by recompute (v1 has no swap): free blocks, back to the front of waiting."""
        self.kv.free(req)
        req.status = Status.PREEMPTED
        req.num_computed = 0
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)

    # ------------------------------------------------------------------ applying the output
    def update_from_output(self, batch: StepBatch, now_s: float = 0.0) -> StepOutcome:
        """Append the sampled tokens of `batch`; finish requests that reached max_tokens.
        In async mode the engine calls this after the *next* step was scheduled."""
        rb = self.rb
        kv = self.kv
        async_ = self.limits.async_scheduling
        if batch in rb.open_batches:
            rb.open_batches.remove(batch)
        idx = batch.sampler_idx
        if idx.size and int(idx[-1]) >= batch.low:
            idx = idx[idx < batch.low]
        first: list[Request] = []
        finished: list[Request] = []
        gaps = None
        if idx.size:
            if async_:
                rb.ph[idx] -= 1
            out = rb.output[idx] + 1
            rb.output[idx] = out
            rb.num_tokens[idx] += 1
            last = rb.last_tok[idx]
            had = last >= 0.0
            gaps = now_s - last[had]
            rb.last_tok[idx] = now_s
            for i in idx[out == 1].tolist():
                first.append(rb.slots[i])
            if async_ and kv.enable_caching:
                upto = rb.computed[idx] - rb.ph[idx]
                full = upto // kv.block_size
                for j in np.flatnonzero(full > rb.ncached[idx]).tolist():
                    i = int(idx[j])
                    kv.cache_blocks(rb.slots[i], int(upto[j]))
                    rb.ncached[i] = rb.slots[i].num_cached_blocks
            fin = idx[out >= rb.max_tokens[idx]]
            if fin.size:
                keep = np.ones(rb.n, dtype=bool)
                for i in fin.tolist():
                    req = rb.writeback(i)
                    req.status = Status.FINISHED
                    finished.append(req)
                    keep[i] = False
                    kv.free(req)
                rb.compact(keep)
        ntok = int(idx.size)
        if batch.stale:                       # async: preempted while their token was in flight
            gone = []
            for req in batch.stale:
                if req.last_token_s >= 0.0:
                    gaps = np.append(gaps if gaps is not None else np.zeros(0), now_s - req.last_token_s)
                req.last_token_s = now_s
                req.num_output += 1
                ntok += 1
                if req.num_output == 1:
                    first.append(req)
                if req.num_output >= req.max_tokens:
                    req.status = Status.FINISHED
                    finished.append(req)
                    gone.append(req)
            if gone:
                ids = set(id(r) for r in gone)
                self.waiting = deque(r for r in self.waiting if id(r) not in ids)
        return StepOutcome(first, finished, itl_gaps_s=gaps, num_tokens=ntok)
