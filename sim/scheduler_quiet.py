"""Quiet stretches on the v1 scheduler's state (`sim.scheduler_v1.SchedulerV1`): the scheduler side
of `sim.quiet`.  Several decode-only steps are taken at once by moving the decode set's clock and
handing out the blocks its members come due for, in vLLM's order; a stretch may end with the
application that finishes members.  `quiet_steps` says how many upcoming steps are certain to be
such steps, `advance_quiet` takes them, `quiet_finish` applies a finishing stretch's last step at
its end and `quiet_batch` is the step left in flight (async).  Pipeline parallelism: the same per
lane (`pp_quiet_*`).  Functions on the scheduler's own state and helpers, as
`sim.scheduler_spec`; `sim.quiet` plans the stretches and `sim.engine` yields.
"""

from __future__ import annotations

import heapq

from sim.batch import StepBatch
from sim.decode_set import extend, leave, push_finish, take
from sim.kv_state import KVState
from sim.request import Request, Status, admit_seq_of
from sim.scheduler_lanes import Lane, load_lane
from sim.scheduler_v1 import SchedulerV1


def _hand_out_due(s: SchedulerV1, alloc_due: dict[int, list[tuple[Request, int]]], c: int) -> None:
    """The blocks decode-set members come due for at clock `c`, in admission order (a member
    crossing a block boundary), and their next due clock one block later."""
    lst = take(alloc_due, c)
    if lst:
        due = [r for r, v in lst if r.version == v and r.in_decode_set]
        if len(due) > 1:
            due.sort(key=admit_seq_of)
        if due:
            s.kv.append_blocks(due)
            extend(alloc_due, c + s.kv.block_size, due)


def quiet_steps(s: SchedulerV1, limit: int, through_finish: bool = False) -> list[int]:
    """Blocks allocated in each of the next steps that are certain to change nothing but the
    decode set's counters and block tables: nobody finishes, is admitted, preempted or
    prefilling (the caller also makes sure no request arrives).  Empty: take a normal step.

    `through_finish`: the stretch may end with the first application that finishes members
    (`quiet_finish`): async, the step whose scheduling sees them leave because their last
    token is in flight; sync, the step that gives them their last token.  Then
    `quiet_finish_key` is the clock value of that application and (async)
    `quiet_leave_members` / `quiet_leave_base` what the leavers take out of the decode set's
    shape (for the step time of the step left in flight); otherwise it is -1."""
    s.quiet_finish_key = -1
    if s.explicit or s.record_schedule or not s.num_members or s.loading:
        return []
    if s.waiting and len(s.running_map) < s.limits.max_num_seqs:
        return []
    for b in s.inflight:               # async: the step in flight may only hand members a token
        if b.stale or b.preempted or any(not r.in_decode_set for r in b.samplers):
            return []
    keys = s.finish_keys
    while keys and keys[0] not in s.finish_due:
        heapq.heappop(keys)
    c = s.clock
    m = min(limit, s.kv.block_size)
    leavers: set[int] = set()
    async_ = s.limits.async_scheduling
    if keys:
        k0 = keys[0]
        span = k0 - c + 1 if async_ else k0 - c        # steps up to the finishing application
        if through_finish and 0 < span <= m:
            m = span
            dm = 0
            db = 0
            for r, v in s.finish_due[k0]:
                if r.version == v and r.in_decode_set:
                    leavers.add(r.req_id)
                    dm += 1
                    db += r.base_computed - r.base_clock
            if leavers:
                s.quiet_finish_key = k0
                s.quiet_leave_members = dm
                s.quiet_leave_base = db
        else:
            m = min(m, k0 - c - 1)
    free = s.kv.pool.nfree
    counts: list[int] = []
    for j in range(m):
        lst = s.alloc_due.get(c + j)
        if lst is None:
            k = 0
        elif c + j == s.quiet_finish_key:      # leavers are not scheduled: no block for them
            k = sum(1 for r, v in lst if r.version == v and r.in_decode_set and r.req_id not in leavers)
        else:
            k = sum(1 for r, v in lst if r.version == v and r.in_decode_set)
        free -= k
        if free < 0:
            break
        counts.append(k)
    if len(counts) < m:
        s.quiet_finish_key = -1
    return counts


def advance_quiet(s: SchedulerV1, m: int, finish: bool = False, leave_s: float = -1.0) -> list[KVState]:
    """Take `m` quiet steps (see `quiet_steps`) at once: member block allocations in vLLM's
    order, the step clock, and (async) the trivial application of the steps in flight.
    With `finish`, the last step is `quiet_steps`'s finishing step: its application's
    finishing is left to `quiet_finish`, and (async) its scheduling first takes the leavers
    out of the decode set, as `schedule` does (`leave_s`, when >= 0, is the time of the
    application before it).
    Returns the KV state after each step's allocations."""
    async_ = s.limits.async_scheduling
    states = []
    for i in range(m):
        c = s.clock
        fin = finish and i == m - 1
        if fin and async_:
            assert c == s.quiet_finish_key
            if leave_s >= 0.0:
                s.last_update_s = leave_s
            for r, v in s.finish_due.get(c, ()):
                if r.version == v and r.in_decode_set:
                    leave(s, r)
                    push_finish(s, c, r)
        _hand_out_due(s, s.alloc_due, c)
        s.clock = c + 1
        if not fin:
            take(s.finish_due, s.clock - (1 if async_ else 0))
        s.upd = s.clock - (1 if async_ else 0)
        states.append(s.kv_state())
    return states


def quiet_finish(s: SchedulerV1, now_s: float) -> list[Request]:
    """The application of a finishing stretch's last step: the members it finishes free
    their blocks, in running-list order, as `update_from_output` does."""
    s.last_update_s = now_s
    s.upd = s.quiet_finish_key          # (an empty batch closed after it may have moved it on)
    to_finish: list[Request] = []
    for r, v in take(s.finish_due, s.upd) or ():
        if r.version == v and r.status is Status.RUNNING:
            to_finish.append(r)
    if len(to_finish) > 1:
        to_finish.sort(key=admit_seq_of)
    finished: list[Request] = []
    for r in to_finish:
        if r.status is Status.RUNNING:
            s._finish(r, finished)
    s.quiet_finish_key = -1
    return finished


def quiet_batch(s: SchedulerV1) -> StepBatch:
    """The step the decode set runs at the current clock, as a batch (async: left in flight
    after a quiet stretch, replacing the batch that was in flight before it)."""
    b = StepBatch()
    dm = s.num_members
    c = s.clock - 1
    b.num_decode_tokens = dm
    b.decode_ctx_tokens = s.members_base + dm * c + dm
    b.num_members = dm
    b.clock_after = s.clock
    s.inflight = [b]
    return b


def pp_quiet_lanes(s: SchedulerV1, limit: int) -> list[tuple[Lane, list[int], int]]:
    """PP: the lanes in the order the batch queue schedules them (the applied lane, then the
    lanes in flight, oldest first), each with the blocks its next decode-only steps allocate and
    the clock value of its next application that may finish members (-1: none in reach), when
    every upcoming scheduling and application up to those is certain to change nothing but the
    lanes' counters and block tables: nobody explicit, admitted or sampling a first token.  A lane
    may take steps up to the one whose application finishes members (the caller ends the stretch
    with that application, `pipeline_stretch`).  Empty: take a normal step.  The caller checks
    the free blocks over the interleaved steps and that no request arrives."""
    if (not s.lanes_on or s.explicit or s.record_schedule or s.loading
            or len(s.ready_lanes) != 1):
        return []
    lim = s.limits
    if s.waiting and len(s.running_map) < lim.max_num_seqs:
        return []
    for b, _ in s.lane_inflight:
        if b.samplers or b.stale:
            return []
    lanes = [s.ready_lanes[0]] + [ln for _, ln in s.lane_inflight]
    bs = s.kv.block_size
    steps: list[int] = []
    fins: list[int] = []
    for lane in lanes:
        if lane.num_members > lim.max_num_batched_tokens:
            return []                         # the literal path would split the cohort
        keys = lane.finish_keys
        while keys and keys[0] not in lane.finish_due:
            heapq.heappop(keys)
        m = min(limit, bs)
        fin = -1
        if keys:                              # schedulings up to the batch applied at keys[0]
            if keys[0] - lane.clock <= m:
                m = keys[0] - lane.clock
                fin = keys[0]
        if m <= 0:
            return []
        steps.append(m)
        fins.append(fin)
    out: list[tuple[Lane, list[int], int]] = []
    for i in range(len(lanes)):
        lane = lanes[i]
        c = lane.clock
        counts: list[int] = []
        for j in range(steps[i]):
            lst = lane.alloc_due.get(c + j)
            counts.append(0 if lst is None else sum(1 for r, v in lst if r.version == v and r.in_decode_set))
        out.append((lane, counts, fins[i]))
    return out


def pp_quiet_schedule(s: SchedulerV1, lane: Lane) -> int:
    """Schedule `lane`'s next decode-only step without a batch (what `schedule` does for it:
    its members' due blocks in admission order, clock + 1); returns the step's decode context."""
    c = lane.clock
    _hand_out_due(s, lane.alloc_due, c)
    lane.clock = c + 1
    d = lane.num_members
    return lane.members_base + d * c + d


def pp_quiet_apply(s: SchedulerV1, lane: Lane, now_s: float) -> None:
    """Apply `lane`'s batch in flight (what `update_from_output` does for a member-only batch)."""
    lane.upd = lane.clock
    take(lane.finish_due, lane.upd)
    lane.last_update_s = now_s


def pp_quiet_batch(s: SchedulerV1, lane: Lane, ctx_tokens: int) -> StepBatch:
    """The batch `lane` has in flight after a quiet stretch, as `schedule` would have made it."""
    b = StepBatch()
    d = lane.num_members
    b.num_decode_tokens = d
    b.decode_ctx_tokens = ctx_tokens
    b.num_members = d
    b.clock_after = lane.clock
    return b


def pp_quiet_end(s: SchedulerV1, inflight: list[tuple[StepBatch, Lane]], ready: Lane | None) -> None:
    """After a quiet stretch: the batches now in flight (oldest first), and the lane applied last
    (loaded), or, when the stretch ends with a finishing application left to `update_from_output`
    (`ready` None), no lane applied: the one scheduled last stays loaded, as `schedule` leaves it."""
    s.inflight = [b for b, _ in inflight]
    s.lane_inflight = inflight
    if ready is None:
        s.ready_lanes = []
        load_lane(s, inflight[-1][1])
    else:
        s.ready_lanes = [ready]
        load_lane(s, ready)
