"""vLLM's V0 scheduler (`vllm-v0`): waiting / running / swapped queues of sequence groups.

Followed (read, not copied): vLLM 0.8.5, vllm/core/scheduler.py `Scheduler._schedule_default`,
`_schedule_chunked_prefill`, `_schedule_running`, `_schedule_swapped`, `_schedule_prefills`,
`_preempt`, `_preempt_by_recompute`, `_preempt_by_swap`, `_swap_in`, `_swap_out`,
`_append_slots`, `free_finished_seq_groups`, `SchedulingBudget`; the block manager is
`sim.block_manager_v0`.  One step:

* Without chunked prefill (`_schedule_default`): when nothing is swapped, waiting groups are
  admitted FCFS with their whole prompt (token budget, `max_num_seqs`, `can_allocate` with the
  watermark: LATER stops admission, NEVER refuses the request).  A step that admits a prompt runs
  no decodes.  Otherwise the running groups decode; when a group cannot append its slots the
  *last* running group is preempted until it fits (or the group itself is the victim); then
  swapped groups are swapped back in, FCFS, only if nobody was preempted in this step.
* With chunked prefill (`_schedule_chunked_prefill`): running groups (decodes and prompt chunks)
  first, then swapped groups (if nobody was preempted), then waiting prompts, in one mixed batch.
* Preemption: `engine.preemption_mode` unset is vLLM's choice, recompute for a group with one
  unfinished sequence and swap otherwise.  Recompute frees the blocks and puts the group at the
  front of the waiting queue (`extendleft`, so several victims keep their running order); swap
  copies the blocks to the CPU pool and appends the group to the swapped queue.  When the CPU
  pool cannot take them vLLM raises "Aborted due to the lack of CPU swap space"; here the run
  fails with a one-line `SimulationError` naming `engine.swap_space`.
* After the step every sequence whose prompt is computed samples a token; sequences reaching
  `max_tokens` finish and are freed in running-queue order (`free_finished_seq_groups`).

Modelling choices, stated: parallel sampling (`n > 1`) is a *forked* sequence group, as in the
vLLM paper and the V0 block manager's `fork`: the prompt is prefilled once (counted once against
the token budget, chunked like a single prompt), the n sequences share its blocks by ref count,
and the first append into the shared, partly filled last block copies it (copy-on-write, counted
in `StepBatch.copy_blocks`).  vLLM >= 0.6's V0 engine actually fans n > 1 out into n separate
requests; the fork is modelled because swapping and copy-on-write of multi-sequence groups are
what the V0 allocator is about.  Recompute of a group with several running sequences is an
assertion failure in vLLM, and a one-line error here.  The V0 engine is synchronous (schedule,
execute, process outputs); its async *output processor* only overlaps CPU post-processing, which
the cost model's per-step overhead stands for.  Prefix caching is not modelled for V0 (refused
in the scenario).  Requests vLLM would ignore (prompt over the limit, or never fitting next to
the watermark) fail the run in one line, as `sim.runner.check_fits` does for v1.
"""

from __future__ import annotations

from collections import deque

from sim.batch import StepBatch
from sim.block_manager_v0 import AllocStatus, BlockManagerV0, num_tokens
from sim.errors import SimulationError
from sim.kv_state import KVState
from sim.request import Request, Status
from sim.scheduler_v0_budget import SchedulingBudget
from sim.scheduler_v1 import SchedulerLimits, StepOutcome
from sim.seq_group import SeqGroup


class SchedulerV0:
    """The queues, the block manager and the preemption policy of one replica."""

    def __init__(self, limits: SchedulerLimits, kv: BlockManagerV0, preemption_mode: str | None = None,
                 scenario_path: str = "", swap_space_gib: float | None = None):
        self.limits = limits
        self.kv = kv
        self.preemption_mode = preemption_mode
        self.scenario_path = scenario_path          # for one-line errors
        self.swap_space_gib = swap_space_gib
        self.waiting_groups: deque[SeqGroup] = deque()
        self.running_groups: deque[SeqGroup] = deque()
        self.swapped_groups: deque[SeqGroup] = deque()
        self.num_preemptions = 0
        self._scheduled: list[tuple[SeqGroup, int]] = []   # groups of the step in flight, with tokens

    # ------------------------------------------------------------------ queues and views
    def add_request(self, req: Request) -> None:
        """Children of one request (same `parent_id`) arrive back to back and form one group."""
        req.status = Status.WAITING
        q = self.waiting_groups
        if q and q[-1].request_id == req.parent_id and all(s.num_computed == 0 for s in q[-1].seqs):
            group = q[-1]
            group.seqs.append(req)
        else:
            group = SeqGroup(req)
            q.append(group)
        req.group = group

    @property
    def waiting(self) -> deque[SeqGroup]:
        return self.waiting_groups

    @property
    def running(self) -> list[Request]:
        return [s for g in self.running_groups for s in g.seqs if s.status is Status.RUNNING]

    @property
    def num_running(self) -> int:
        return sum(g.num_unfinished for g in self.running_groups)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting_groups or self.running_groups or self.swapped_groups)

    def kv_state(self) -> KVState:
        return self.kv.state_fractions()

    def _fail(self, key: str, message: str) -> SimulationError:
        return SimulationError(self.scenario_path, key, message)

    # ------------------------------------------------------------------ one step
    def schedule(self) -> StepBatch:
        batch = StepBatch()
        self._scheduled = []
        if self.limits.enable_chunked_prefill:
            self._schedule_chunked_prefill(batch)
        else:
            self._schedule_default(batch)
        for g, n in self._scheduled:
            if g.prefilling:
                batch.add(g.with_status(Status.RUNNING)[0], n)   # the prompt is computed once
            else:
                for s in g.with_status(Status.RUNNING):
                    batch.add(s, 1)
        if batch.is_empty and not self.running_groups and self.has_work:
            g = (self.swapped_groups or self.waiting_groups)[0]
            raise self._fail("engine.num_gpu_blocks_override",
                             f"request {g.request_id} can never be resumed: it needs more GPU blocks than the "
                             f"{self.kv.gpu.num_blocks} minus the {self.kv.watermark_blocks}-block watermark "
                             "(vLLM V0 would wait forever)")
        return batch

    def _schedule_default(self, batch: StepBatch) -> None:
        lim = self.limits
        budget = SchedulingBudget(lim.max_num_batched_tokens, lim.max_num_seqs)
        for g in self.running_groups:
            budget.add_num_seqs(g.request_id, g.num_unfinished)
        prefills: list[tuple[SeqGroup, int]] = []
        if not self.swapped_groups:
            prefills = self._schedule_prefills(budget, False, batch)
        decodes: list[SeqGroup] = []
        swapped_in: list[tuple[SeqGroup, int]] = []
        preempted: list[SeqGroup] = []
        swapped_out: list[SeqGroup] = []
        if not prefills:
            decodes_n, _, preempted, swapped_out = self._schedule_running(budget, False, batch)
            decodes = [g for g, _ in decodes_n]
            if not preempted and not swapped_out:
                swapped_in, _ = self._schedule_swapped(budget, False, batch)
        self.waiting_groups.extendleft(preempted)
        self.running_groups.extend(g for g, _ in prefills)
        self.running_groups.extend(decodes)
        self.running_groups.extend(g for g, _ in swapped_in)
        self.swapped_groups.extend(swapped_out)
        self._scheduled = prefills + [(g, 1) for g in decodes] + swapped_in

    def _schedule_chunked_prefill(self, batch: StepBatch) -> None:
        lim = self.limits
        budget = SchedulingBudget(lim.max_num_batched_tokens, lim.max_num_seqs)
        decodes, chunks, preempted, swapped_out = self._schedule_running(budget, True, batch)
        si_decodes: list[tuple[SeqGroup, int]] = []
        si_prefills: list[tuple[SeqGroup, int]] = []
        if not preempted and not swapped_out:
            si_decodes, si_prefills = self._schedule_swapped(budget, True, batch)
        prefills = self._schedule_prefills(budget, True, batch)
        self.waiting_groups.extendleft(preempted)
        run = self.running_groups
        run.extend(g for g, _ in si_decodes)
        run.extend(g for g, _ in si_prefills)
        run.extend(g for g, _ in decodes)
        # prompts whose last chunk runs now go first: next step they decode ahead of other chunks
        finishing = [g for g, n in chunks if self._uncomputed(g) == n]
        run.extend(finishing + [g for g, n in chunks if self._uncomputed(g) != n])
        run.extend(g for g, _ in prefills)
        self.swapped_groups.extend(swapped_out)
        self._scheduled = prefills + chunks + si_prefills + decodes + si_decodes

    @staticmethod
    def _uncomputed(g: SeqGroup) -> int:
        s = g.with_status(Status.RUNNING)[0]
        return num_tokens(s) - s.num_computed

    def _num_new_tokens(self, g: SeqGroup, status: Status, chunking: bool, budget: SchedulingBudget) -> int:
        """vLLM `_get_num_new_uncached_and_cached_tokens` without prefix caching: one token per
        decoding sequence; a prompt's uncomputed tokens, once per group, cut to the budget left."""
        seqs = g.with_status(status)
        if g.prefilling:
            n = num_tokens(seqs[0]) - seqs[0].num_computed
            one = True
        else:
            n = len(seqs)
            one = n == 1
        if chunking and one:
            n = min(n, budget.remaining_token_budget)
        return n

    def _schedule_running(self, budget: SchedulingBudget, chunking: bool, batch: StepBatch
                          ) -> tuple[list[tuple[SeqGroup, int]], list[tuple[SeqGroup, int]], list[SeqGroup], list[SeqGroup]]:
        decodes: list[tuple[SeqGroup, int]] = []
        chunks: list[tuple[SeqGroup, int]] = []
        preempted: list[SeqGroup] = []
        swapped_out: list[SeqGroup] = []
        q = self.running_groups
        kv = self.kv
        while q:
            g = q[0]
            n = self._num_new_tokens(g, Status.RUNNING, chunking, budget)
            if n == 0:
                break
            q.popleft()
            fits = True
            while not kv.can_append_slots(g.with_status(Status.RUNNING)):
                budget.subtract_num_batched_tokens(g.request_id, n)
                budget.subtract_num_seqs(g.request_id, g.num_unfinished)
                victim = q.pop() if q else g
                if self._preempt(victim, batch):
                    preempted.append(victim)
                else:
                    swapped_out.append(victim)
                if victim is g:
                    fits = False
                    break
            if not fits:
                continue
            for s in g.with_status(Status.RUNNING):
                batch.copy_blocks += kv.append_slots(s)
            (chunks if g.prefilling else decodes).append((g, n))
            budget.add_num_batched_tokens(g.request_id, n)
            if chunking:
                budget.add_num_seqs(g.request_id, g.num_unfinished)
        return decodes, chunks, preempted, swapped_out

    def _schedule_swapped(self, budget: SchedulingBudget, chunking: bool, batch: StepBatch
                          ) -> tuple[list[tuple[SeqGroup, int]], list[tuple[SeqGroup, int]]]:
        decodes: list[tuple[SeqGroup, int]] = []
        prefills: list[tuple[SeqGroup, int]] = []
        q = self.swapped_groups
        kv = self.kv
        while q:
            g = q[0]
            seqs = g.with_status(Status.SWAPPED)
            status = kv.can_swap_in(seqs)
            if status is AllocStatus.LATER:
                break
            if status is AllocStatus.NEVER:
                raise self._fail("engine.num_gpu_blocks_override",
                                 f"swapped request {g.request_id} no longer fits the {kv.gpu.num_blocks} GPU blocks")
            n = self._num_new_tokens(g, Status.SWAPPED, chunking, budget)
            k = g.num_unfinished
            if n == 0 or not budget.can_schedule(n, k):
                break
            q.popleft()
            batch.swap_in_blocks += kv.swap_in(seqs)
            for s in seqs:
                s.status = Status.RUNNING
            for s in seqs:
                batch.copy_blocks += kv.append_slots(s)
            (prefills if g.prefilling else decodes).append((g, n))
            budget.add_num_batched_tokens(g.request_id, n)
            budget.add_num_seqs(g.request_id, k)
        return decodes, prefills

    def _schedule_prefills(self, budget: SchedulingBudget, chunking: bool, batch: StepBatch) -> list[tuple[SeqGroup, int]]:
        lim = self.limits
        out: list[tuple[SeqGroup, int]] = []
        if budget.remaining_token_budget == 0:
            return out
        limit = lim.max_model_len if chunking else min(lim.max_model_len, lim.max_num_batched_tokens)
        q = self.waiting_groups
        kv = self.kv
        while q:
            g = q[0]
            seqs = g.with_status(Status.WAITING)
            n = self._num_new_tokens(g, Status.WAITING, chunking, budget)
            if n > limit:
                raise self._fail("workload", f"request {g.request_id}: prompt of {n} tokens exceeds the limit of "
                                 f"{limit} (vLLM V0 ignores it)")
            status = kv.can_allocate(num_tokens(seqs[0]))
            if status is AllocStatus.LATER:
                break
            if status is AllocStatus.NEVER:
                raise self._fail("workload", f"request {g.request_id} needs {num_tokens(seqs[0])} tokens of KV cache, more "
                                 f"than the {kv.gpu.num_blocks} GPU blocks minus the {kv.watermark_blocks}-block "
                                 "watermark (vLLM V0 ignores it)")
            if budget.num_batched_tokens >= lim.max_num_batched_tokens:
                break
            k = g.num_unfinished
            if n == 0 or not budget.can_schedule(n, k):
                break
            q.popleft()
            kv.allocate(seqs)
            for s in seqs:
                s.status = Status.RUNNING
            out.append((g, n))
            budget.add_num_batched_tokens(g.request_id, n)
            budget.add_num_seqs(g.request_id, k)
            batch.admitted.append(seqs[0])
            batch.admitted_hits.append(0)
        return out

    def _preempt(self, g: SeqGroup, batch: StepBatch) -> bool:
        """Preempt a group; True for recompute, False for swap (vLLM `_preempt`)."""
        seqs = g.with_status(Status.RUNNING)
        mode = self.preemption_mode or ("recompute" if g.num_unfinished == 1 else "swap")
        if mode == "recompute":
            if len(seqs) != 1:
                raise self._fail("engine.preemption_mode",
                                 f"request {g.request_id} has {len(seqs)} running sequences (n > 1) and vLLM V0 cannot "
                                 "preempt them by recompute; use swap or leave preemption_mode unset")
            s = seqs[0]
            self.kv.free(s)
            s.status = Status.WAITING
            s.num_computed = 0
            g.prefilling = True
        else:
            kv = self.kv
            if not kv.can_swap_out(seqs):
                raise self._fail("engine.swap_space",
                                 f"aborted due to the lack of CPU swap space: swapping out request {g.request_id} "
                                 f"needs {kv.num_blocks_to_swap_out(seqs)} CPU blocks, {kv.cpu.num_free} of "
                                 f"{kv.cpu.num_blocks} free; increase engine.swap_space"
                                 + (f" (got {self.swap_space_gib:g} GiB)" if self.swap_space_gib is not None else ""))
            batch.swap_out_blocks += kv.swap_out(seqs)
            for s in seqs:
                s.status = Status.SWAPPED
        seqs[0].num_preemptions += 1
        batch.preempted.append(seqs[0])
        self.num_preemptions += 1
        return mode == "recompute"

    # ------------------------------------------------------------------ applying the output
    def update_from_output(self, batch: StepBatch, now_s: float = 0.0) -> StepOutcome:
        """Apply the step: computed tokens, one sampled token per sequence whose prompt is done,
        then free finished sequences in running-queue order."""
        sampled: list[Request] = []
        first: list[Request] = []
        for g, n in self._scheduled:
            seqs = g.with_status(Status.RUNNING)
            if g.prefilling:
                for s in seqs:
                    s.num_computed += n
                if seqs[0].num_computed < num_tokens(seqs[0]):
                    continue
                g.prefilling = False
            else:
                for s in seqs:
                    s.num_computed += 1
            for s in seqs:
                s.num_output += 1
                sampled.append(s)
                if s.num_output == 1:
                    first.append(s)
                if s.num_output >= s.max_tokens:
                    s.status = Status.FINISHED
        self._scheduled = []
        finished: list[Request] = []
        remaining: deque[SeqGroup] = deque()
        for g in self.running_groups:
            for s in g.seqs:
                if s.status is Status.FINISHED and s.req_id in self.kv.tables:
                    self.kv.free(s)
                    finished.append(s)
            if g.num_unfinished:
                remaining.append(g)
        self.running_groups = remaining
        return StepOutcome(first, finished, sampled=sampled, num_tokens=len(sampled))
