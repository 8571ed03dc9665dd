"""The running requests' share of a v1 scheduling step (`sim.scheduler_v1.SchedulerV1.schedule`):
each one's token demand, their KV blocks in vLLM's order, and preemption when the blocks run
out.  Two paths give vLLM's decisions: `schedule_running_regular` when the budget covers
everyone's demand (only the allocation order and preemption matter: decode-set members' due
blocks and the explicit requests' needs, merged in running-list order), and
`schedule_running_literal`, vLLM's loop over the running list verbatim, when it does not.
`preempt_last` is vLLM's `_preempt_request` of the last running request (recompute).
Functions of the scheduler's state, as `sim.decode_set` and `sim.scheduler_spec` are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.batch import StepBatch
from sim.decode_set import extend, leave, take
from sim.kv_cache_manager import KVCacheManager, cdiv
from sim.request import Request, Status, admit_seq_of, admit_seq_of_pair
from sim.scheduler_lanes import Lane, leave_other_lane

if TYPE_CHECKING:
    from sim.scheduler_v1 import SchedulerV1


def demand(s: SchedulerV1, r: Request, thr: int) -> int:
    """The tokens running request `r` asks for this step: the rest of its sequence (with
    placeholders in flight and drafts), cut by the long-prefill threshold `thr` and
    max_model_len; 0 when async scheduling has its last token in flight."""
    lim = s.limits
    if lim.async_scheduling and r.ph > 0 and r.num_computed + 2 - r.ph >= r.num_prompt_tokens + r.max_tokens:
        return 0
    d = r.num_prompt_tokens + r.num_output + r.ph - r.num_computed
    if s.spec is not None:
        d += r.num_spec_tokens
    if 0 < thr < d:
        d = thr
    return min(d, lim.max_model_len - 1 - r.num_computed)


def schedule_running_regular(s: SchedulerV1, batch: StepBatch, demands: list[tuple[Request, int]]) -> list[tuple[Request, int]]:
    """Everyone's demand fits the budget: only allocation order (and preemption) matters."""
    kv = s.kv
    bs = kv.block_size
    c = s.clock
    due = [r for r, v in take(s.alloc_due, c) or () if r.version == v and r.in_decode_set]
    la = s.lookahead
    if la:      # spec decode: slots for the drafter's lookahead too (vLLM allocate_slots)
        mml = s.limits.max_model_len
        needs = [(r, cdiv(min(r.num_computed + d + la, mml), bs) - r.nblocks) for r, d in demands]
    else:
        needs = [(r, cdiv(r.num_computed + d, bs) - r.nblocks) for r, d in demands]
    needs = [(r, k) for r, k in needs if k > 0]
    if needs:
        events = sorted([(r, 1) for r in due] + needs, key=admit_seq_of_pair)
    else:
        if len(due) > 1:
            due.sort(key=admit_seq_of)
        events = None
    pool = kv.pool
    if events is None and len(due) <= pool.nfree:
        if due:
            kv.append_blocks(due)
    elif events is not None and sum(k for _, k in events) <= pool.nfree:
        if la and all(k == 1 for _, k in events):
            kv.append_blocks([r for r, _ in events])   # spec decode: one block each, in order (pop_few)
            events = []
        for r, k in events:
            if r.in_decode_set:
                kv.append_blocks([r])
            else:
                kv.append_blocks_n(r, k)
    else:
        stop = False
        for r, k in (events if events is not None else [(r, 1) for r in due]):
            if r.status is not Status.RUNNING:
                continue               # preempted as a tail victim earlier in this loop
            while pool.nfree < k:
                victim = preempt_last(s, batch)
                if victim is r:
                    stop = True
                    break
            if stop:
                break
            if r.in_decode_set:
                kv.append_blocks([r])
            else:
                kv.append_blocks_n(r, k)
        demands = [(r, d) for r, d in demands if r.status is Status.RUNNING]
    if due:
        extend(s.alloc_due, c + bs, [r for r in due if r.in_decode_set])
    if kv.enable_caching:
        for r, d in demands:
            kv.cache_blocks(r, min(r.num_computed + d, r.num_prompt_tokens + r.num_output))
    return demands


def schedule_running_literal(s: SchedulerV1, batch: StepBatch, budget: int, thr: int) -> list[tuple[Request, int]]:
    """The budget does not cover everyone: vLLM's loop over the running list, verbatim."""
    lanes = s.lanes_on
    for r in list(s.running_map.values()):
        if r.in_decode_set and (not lanes or s.lane_of[r.req_id] is s.lane):
            leave(s, r)
    kv = s.kv
    out: list[tuple[Request, int]] = []
    for r in list(s.running_map.values()):
        if budget <= 0:
            break
        if r.status is not Status.RUNNING or r.in_decode_set:   # PP: another lane's member, in flight
            continue
        d = min(demand(s, r, thr), budget)
        if d <= 0:
            continue
        ok = allocate_lookahead(s, r, d) if s.lookahead else kv.allocate_slots(r, d)
        while not ok:
            victim = preempt_last(s, batch)
            if victim is r:
                break
            for j, (q, dq) in enumerate(out):   # priority: a victim scheduled earlier gives its tokens back
                if q is victim:
                    budget += dq
                    del out[j]
                    break
            ok = allocate_lookahead(s, r, d) if s.lookahead else kv.allocate_slots(r, d)
        if not ok:
            break
        out.append((r, d))
        budget -= d
    return out


def allocate_lookahead(s: SchedulerV1, r: Request, n: int, hit_tokens: int = 0, num_hits: int = 0,
                        full_sequence_must_fit: bool = False) -> bool:
    """`allocate_slots` with the drafter's lookahead slots (spec decode: paged allocator only)."""
    kv = s.kv
    assert isinstance(kv, KVCacheManager)
    return kv.allocate_slots(r, n, hit_tokens, num_hits, full_sequence_must_fit=full_sequence_must_fit,
                             has_scheduled_reqs=bool(s.running_map), num_lookahead_tokens=s.lookahead)


def preempt_last(s: SchedulerV1, batch: StepBatch) -> Request:
    """Preempt the last running request (recompute; v1 has no swap); with the priority policy,
    the first running request with the largest (priority, arrival time)."""
    if s.priority:
        r = max(s.running_map.values(), key=lambda q: (q.priority, q.arrival_s))
        del s.running_map[r.req_id]
    else:
        _, r = s.running_map.popitem()
    other: Lane | None = None
    if r.in_decode_set:
        if s.lanes_on and s.lane_of[r.req_id] is not s.lane:
            other = s.lane_of[r.req_id]
            leave_other_lane(s, r, other)
        else:
            leave(s, r)
    del s.explicit[r.req_id]
    if s.lanes_on:                       # PP: a member of a lane in flight is in its batch
        for b, lane in s.lane_inflight:
            sampler = r in b.samplers
            counted = lane is other and not sampler
            if counted or sampler:
                b.stale.append(r)
                b.stale_members.append(counted)
    else:
        for b in s.inflight:             # async: its token in that step is still delivered
            counted = r.join_clock < b.clock_after <= r.leave_clock   # a member when b was scheduled
            if counted or r in b.samplers:
                b.stale.append(r)
                b.stale_members.append(counted)
    s.kv.free(r)
    r.num_spec_tokens = 0                    # vLLM clears spec_token_ids on preemption
    r.status = Status.PREEMPTED
    r.num_computed = 0
    r.ph = 0
    r.num_preemptions += 1
    s.num_preemptions += 1
    s.waiting.appendleft(r)
    batch.preempted.append(r)
    return r
