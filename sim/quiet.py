"""Quiet stretches: several engine steps in which only the decode set advances, taken at once.

Between events (an arrival the scheduler would see, a finish, a preemption, an admission, a
prefill) every step of a replica decodes one token for each running request and at most
allocates blocks.  `sim.scheduler_v1.SchedulerV1.quiet_steps` says how many upcoming steps are
certain to be such steps; this module prices them one by one (each step's attention context grows
by the batch size), cuts the stretch before the first step whose scheduling would see the next
arrival, and applies it: the same block tables, clock, metrics and times as taking the steps one
by one, with one SimPy event instead of one per step.  Pure functions; the engine yields.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.cost_model import step_time_s
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica

QUIET_MAX_STEPS = 64


@dataclass(slots=True)
class Stretch:
    """A planned stretch: step start times and durations (async: of the steps applied)."""

    starts: list[float]
    durations: list[float]
    end_s: float                 # when the last applied step ends
    pending_dt: float = 0.0      # async: duration of the step left in flight


def plan_sync(rep: Replica, now: float, next_arrival_s: float) -> Stretch | None:
    """Sync engine: step j is scheduled at its own start, which must precede the next arrival."""
    sched = rep.scheduler
    d, base, c = sched.num_members, sched.members_base, sched.clock
    if now + step_time_s(rep.coster, 0, d, base + d * c + d, 0.0) >= next_arrival_s:
        return None                           # cheap test first: step 1 would see the arrival
    counts = sched.quiet_steps(QUIET_MAX_STEPS)
    if len(counts) < 2:
        return None
    starts: list[float] = []
    durs: list[float] = []
    t = now
    for j in range(len(counts)):
        if t >= next_arrival_s:
            break
        dt = step_time_s(rep.coster, 0, d, base + d * (c + j) + d, 0.0)
        starts.append(t)
        durs.append(dt)
        t += dt
    if len(durs) < 2:
        return None
    return Stretch(starts, durs, t)


def plan_async(rep: Replica, now: float, pending_start: float, pending_dt: float,
               next_arrival_s: float) -> Stretch | None:
    """Async engine: iteration j schedules step j+1 at the start of step j (step 0 is in flight)
    and then applies step j; every such scheduling must precede the next arrival."""
    if pending_start + pending_dt >= next_arrival_s:
        return None                           # cheap test first: iteration 1 would see the arrival
    sched = rep.scheduler
    counts = sched.quiet_steps(QUIET_MAX_STEPS)
    if len(counts) < 2:
        return None
    d, base, c = sched.num_members, sched.members_base, sched.clock
    starts = [pending_start]
    durs = [pending_dt]
    s = now                                   # when iteration 0 schedules
    m = 0
    next_dt = 0.0
    for j in range(len(counts)):
        if s >= next_arrival_s:
            break
        next_dt = step_time_s(rep.coster, 0, d, base + d * (c + j) + d, 0.0)   # step j+1, scheduled at clock c+j
        m = j + 1
        end_j = starts[j] + durs[j]
        if j + 1 < len(counts):
            starts.append(end_j)
            durs.append(next_dt)
        s = end_j
    if m < 2:
        return None
    starts, durs = starts[:m], durs[:m]
    return Stretch(starts, durs, starts[-1] + durs[-1], pending_dt=next_dt)


def record(rep: Replica, rec: Recorder, stretch: Stretch, states: list[KVState],
           first: int = 0) -> None:
    """Metrics of the applied steps (from index `first`), as the step-by-step engine records them."""
    sched = rep.scheduler
    d = sched.num_members
    running, waiting = sched.num_running, rep.num_waiting_seen
    for j in range(first, len(stretch.durations)):
        rec.on_decode_step(rep.index, stretch.starts[j], stretch.durations[j], d, running, waiting, states[j])
