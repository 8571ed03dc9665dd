"""Quiet stretches: several engine steps in which only the decode set advances, taken at once.

Between events (an arrival the scheduler would see, a finish, a preemption, an admission, a
prefill) every step of a replica decodes one token for each running request and at most
allocates blocks.  `sim.scheduler_quiet.quiet_steps` says how many upcoming steps are
certain to be such steps; this module prices them one by one (each step's attention context grows
by the batch size), cuts the stretch before the first step whose scheduling would see the next
arrival, and applies it: the same block tables, clock, metrics and times as taking the steps one
by one, with one SimPy event instead of one per step.  Pure functions; the engine yields.

A stretch may also end with the step whose application finishes members (`Stretch.finishes`;
async: the step whose scheduling sees them leave because their last token is in flight, which
`advance_quiet` takes out of the decode set): the engine finishes them at the stretch's end, the
moment the step-by-step engine applies that step (`sim.scheduler_quiet.quiet_finish`), so nothing
outside the replica sees them go earlier.  On the 100k Azure benchmark this takes 63 %
of the steps in stretches instead of 36 %.

Pipeline parallelism (`pipeline_stretch`): the same for the batch queue, whose lanes (one decode
set per in-flight batch, `sim.scheduler_v1.Lane`) step in turn; a stretch takes whole rounds while
every lane only decodes, with the stage clocks advanced launch by launch as the engine would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim import scheduler_quiet as sq
from sim.batch import StepBatch
from sim.cost_model import StepCoster, step_time_s
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.pipeline import PipelineClock
from sim.replica import Replica
from sim.scheduler_v1 import SchedulerV1

QUIET_MAX_STEPS = 64


class Stretch:
    """A planned stretch: step start times and durations (async: of the steps applied).  A plain
    class, not a dataclass, so that mypyc compiles its `__init__` (one is made per stretch)."""

    __slots__ = ("starts", "durations", "end_s", "pending_dt", "finishes", "members")

    def __init__(self, starts: list[float], durations: list[float], end_s: float, pending_dt: float = 0.0,
                 finishes: bool = False, members: int = 0) -> None:
        self.starts = starts
        self.durations = durations
        self.end_s = end_s                # when the last applied step ends
        self.pending_dt = pending_dt      # async: duration of the step left in flight
        self.finishes = finishes          # the last step's application finishes members (`quiet_finish`)
        self.members = members            # decode-set members of the applied steps


def plan_sync(rep: Replica, now: float, next_arrival_s: float, through_finish: bool = False) -> Stretch | None:
    """Sync engine: step j is scheduled at its own start, which must precede the next arrival.
    `through_finish`: the stretch may end with the step whose application finishes members."""
    sched: SchedulerV1 = rep.scheduler
    coster: StepCoster = rep.coster
    d, base, c = sched.num_members, sched.members_base, sched.clock
    if now + step_time_s(coster, 0, d, base + d * c + d, 0.0) >= next_arrival_s:
        return None                           # cheap test first: step 1 would see the arrival
    counts = sq.quiet_steps(sched, QUIET_MAX_STEPS, through_finish)
    fin_key = sched.quiet_finish_key
    if len(counts) < (1 if fin_key >= 0 else 2):
        return None
    starts: list[float] = []
    durs: list[float] = []
    t = now
    for j in range(len(counts)):
        if t >= next_arrival_s:
            break
        dt = step_time_s(coster, 0, d, base + d * (c + j) + d, 0.0)
        starts.append(t)
        durs.append(dt)
        t += dt
    finishes = fin_key >= 0 and len(durs) == len(counts)
    if len(durs) < (1 if finishes else 2):
        return None
    return Stretch(starts, durs, t, finishes=finishes, members=d)


def plan_async(rep: Replica, now: float, pending_start: float, pending_dt: float,
               next_arrival_s: float, through_finish: bool = False, first_in_flight: bool = False) -> Stretch | None:
    """Async engine: iteration j schedules step j+1 at the start of step j (step 0 is in flight)
    and then applies step j; every such scheduling must precede the next arrival.
    `through_finish`: the stretch may end with an iteration whose scheduling sees members leave
    (their last token in flight) and whose application finishes them (`Stretch.finishes`); that
    iteration may be the only one — unless `first_in_flight` (the step in flight hands new
    members their first tokens and is applied for real before the stretch: it would free the
    leavers' blocks before iteration 0 allocates)."""
    if pending_start + pending_dt >= next_arrival_s:
        return None                           # cheap test first: iteration 1 would see the arrival
    sched: SchedulerV1 = rep.scheduler
    coster: StepCoster = rep.coster
    counts = sq.quiet_steps(sched, QUIET_MAX_STEPS, through_finish)
    fin_key = sched.quiet_finish_key
    d, base, c = sched.num_members, sched.members_base, sched.clock
    if fin_key == c and first_in_flight:
        return None
    if len(counts) < (1 if fin_key >= 0 else 2):
        return None
    starts = [pending_start]
    durs = [pending_dt]
    s = now                                   # when iteration 0 schedules
    m = 0
    next_dt = 0.0
    for j in range(len(counts)):
        if s >= next_arrival_s:
            break
        if c + j == fin_key:                  # the leavers are not in step j+1
            d -= sched.quiet_leave_members
            base -= sched.quiet_leave_base
        next_dt = step_time_s(coster, 0, d, base + d * (c + j) + d, 0.0)   # step j+1, scheduled at clock c+j
        m = j + 1
        end_j = starts[j] + durs[j]
        if j + 1 < len(counts):
            starts.append(end_j)
            durs.append(next_dt)
        s = end_j
    finishes = fin_key >= 0 and m == len(counts)
    if m < (1 if finishes else 2):
        return None
    starts, durs = starts[:m], durs[:m]
    return Stretch(starts, durs, starts[-1] + durs[-1], pending_dt=next_dt, finishes=finishes,
                   members=sched.num_members)


def record(rep: Replica, rec: Recorder, stretch: Stretch, states: list[KVState],
           first: int = 0, last: int = -1) -> None:
    """Metrics of the applied steps from index `first` up to `last` (excluded; -1: all), as the
    step-by-step engine records them."""
    sched = rep.scheduler
    d = stretch.members                       # (async: the leavers may have left since)
    running, waiting = sched.num_running, rep.num_waiting_seen
    end = len(stretch.durations) if last < 0 else last
    rec.on_decode_steps(rep.index, stretch.starts, stretch.durations, first, end, d, running, waiting, states)


@dataclass(slots=True)
class PipeStretch:
    """A pipeline quiet stretch, applied: the batch queue as it stands at `end_s` (entries
    (batch, start, done, KV state) oldest first), when the CPU is next free, and the applications
    to record (lane members, start, duration, KV state while it ran), in order.  `finishing`:
    the stretch ends with an application that finishes members, left to the engine's `_apply`
    at `end_s` (its batch, start and KV state while it ran); it is not in `inflight`."""

    end_s: float
    inflight: list[tuple[StepBatch, float, float, KVState]]
    cpu_free_s: float
    rows: list[tuple[int, float, float, KVState]]
    finishing: tuple[StepBatch, float, KVState] | None = None


def pipeline_stretch(rep: Replica, now: float, horizon_s: float,
                     inflight: list[tuple[StepBatch, float, float, KVState]], clock_s: float = -1.0) -> PipeStretch | None:
    """PP (sim.engine.pipeline_loop.serve_pipeline with p - 1 batches in flight and one lane applied): take the
    coming rounds of the batch queue at once while every lane only decodes.  Iteration i schedules
    the applied lane's next step at t_i (before the next arrival) and launches it through the stage
    clocks, then waits for the oldest batch in flight and applies it at t_{i+1} = t_i + (done - t_i)
    — the float operations of the step-by-step loop, so the same times.  The stretch ends at the
    latest with the first application that may finish members: that one is left to the engine,
    which applies it for real at the stretch's end.  None: take a normal step.  `clock_s`: the
    SimPy clock when the engine's loop runs ahead of it (`now` then is the loop's own clock)."""
    sched: SchedulerV1 = rep.scheduler
    plan = sq.pp_quiet_lanes(sched, QUIET_MAX_STEPS)
    if not plan:
        return None
    pipe: PipelineClock = rep.pipeline
    coster: StepCoster = rep.coster
    p = len(plan)
    oh = pipe.overhead_s
    saved = pipe.save()
    # pass 1, the times: lane k of the round-robin order takes its next step while the scheduling
    # precedes the next arrival and the interleaved allocations find free blocks
    free = sched.kv.pool.nfree
    taken = [0] * p
    # The batch queue, oldest first, is the p - 1 batches in flight before the stretch (lane
    # k + 1 for inflight[k]) followed by the stretch's own launches, round robin from lane 0:
    # launch i is lane i % p's step i // p, and the application at iteration i is of the queue's
    # i-th entry.  Indexed, not a queue of tuples: nothing is allocated per launch but its times.
    starts: list[float] = []                       # each launch's scheduling time
    dones: list[float] = []                        # and when its output is back
    applies: list[float] = []                      # each iteration's application time
    t = now
    cpu_free = 0.0
    n = 0
    finishing = False
    while t < horizon_s:
        k = n % p
        lane, counts, _ = plan[k]
        j = taken[k]
        if j >= len(counts) or counts[j] > free:
            break
        free -= counts[j]
        taken[k] = j + 1
        d = lane.num_members
        ctx = lane.members_base + d * (lane.clock + j) + d
        cpu_free = t + oh
        done = pipe.launch(cpu_free, step_time_s(coster, 0, d, ctx, 0.0), d)
        starts.append(t)
        dones.append(done)
        if n < p - 1:                              # the oldest: in flight from before
            done = inflight[n][2]
            k0 = n + 1
            u0 = plan[k0][0].clock                 # the clock value its application sets
        else:                                      # the oldest: launch i0 of this stretch
            i0 = n - (p - 1)
            done = dones[i0]
            k0 = i0 % p
            u0 = plan[k0][0].clock + i0 // p + 1
        if cpu_free > done:
            done = cpu_free
        if done > t:
            t = t + (done - t)
        applies.append(t)
        n += 1
        if u0 == plan[k0][2]:                      # this application may finish members: the last
            finishing = True
            break
    c = now if clock_s < 0.0 else clock_s          # the SimPy clock the engine's one event starts from
    if n < p or c + (t - c) != t:                  # too short, or the one event would not land on t
        pipe.restore(saved)
        return None
    # pass 2: the same schedulings and applications on the scheduler, in order
    lanes = [e[0] for e in plan]
    kvs: list[KVState] = []                        # KV state while launch i runs
    ctxs: list[int] = []                           # its decode context
    rows: list[tuple[int, float, float, KVState]] = []
    last: tuple[StepBatch, float, KVState] | None = None
    last_k = 0
    b0: StepBatch | None = None                    # the oldest batch, its start and KV state
    s0 = 0.0
    for i in range(n):
        ctxs.append(sq.pp_quiet_schedule(sched, lanes[i % p]))
        kvs.append(sched.kv_state())
        ti = applies[i]
        if i < p - 1:
            b0, s0, _, kv0 = inflight[i]
            k0 = i + 1
        else:
            i0 = i - (p - 1)
            b0 = None
            s0 = starts[i0]
            kv0 = kvs[i0]
            k0 = i0 % p
        if finishing and i == n - 1:               # applied for real by the engine, at t
            last = (b0 if b0 is not None else sq.pp_quiet_batch(sched, lanes[k0], ctxs[i - (p - 1)]), s0, kv0)
            last_k = k0
            break
        sq.pp_quiet_apply(sched, lanes[k0], ti)
        rows.append((lanes[k0].num_members, s0, ti - s0, kv0))
    out: list[tuple[StepBatch, float, float, KVState]] = []
    lane_batches: list[tuple[StepBatch, Any]] = []
    if last is not None:
        lane_batches.append((last[0], lanes[last_k]))
    for i0 in range(n - (p - 1), n):               # still in flight: the last p - 1 launches
        batch = sq.pp_quiet_batch(sched, lanes[i0 % p], ctxs[i0])
        out.append((batch, starts[i0], dones[i0], kvs[i0]))
        lane_batches.append((batch, lanes[i0 % p]))
    sq.pp_quiet_end(sched, lane_batches, None if last is not None else lanes[n % p])   # applied last
    return PipeStretch(t, out, cpu_free, rows, last)
