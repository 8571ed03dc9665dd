"""Steps and arrivals a replica loop takes ahead of the SimPy clock: the plain-Python half of
`sim.engine.ahead`, compiled with mypyc (`setup_native.py`), so that a loop that takes most of
its steps without an event (speculative decoding, the CPU build's synchronous scheduling) does
not pay the interpreter per step.  No SimPy here: the engine's loops (`sim.engine.replica_loop`,
`sim.engine.pipeline_loop`) yield, catch the clock up and report finishes.  `rep` is a
`sim.replica.Replica` (compiled too; `Inbox.wake` takes `Any`: its tests hand it a stand-in).

* `may_run_ahead`: whether a step or wait may pass without an event;
* `Inbox`: the arrivals such a loop sends itself, at their own times;
* `applied_step` / `schedule_at`: a step's application and the next scheduling at a given time;
* `sync_ahead`: the synchronous loop's steps from one scheduled batch on, applied and the next
  scheduled at each one's end, until one must wait for the clock (`AheadRun` says where).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.batch import StepBatch
from sim.cost_model import StepCoster
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica
from sim.scheduler_v1 import SchedulerV1


def may_run_ahead(t: float, horizon_s: float, clock_s: float, start_s: float = 0.0,
                  inbox: Inbox | None = None) -> bool:
    """Whether a step or wait from `start_s` to `t` may pass without an event: at most twice the
    SimPy clock, where t - clock is exact (Sterbenz) so that catching up, clock + (t - clock),
    lands on `t` itself as the step-by-step engine's clock would (where it does not, no other
    delay does either); and before the next arrival, or, with an inbox, when the inbox may send
    the arrivals inside it (it then has: `Inbox.take_inside`)."""
    if not t <= 2.0 * clock_s:
        return False
    return t < horizon_s if inbox is None else inbox.take_inside(start_s, t)


class Inbox:
    """The arrivals a lone replica's loop running ahead of the clock sends itself, at their own
    times, instead of stopping at each (an open loop on one replica, with nothing else reading
    the time: no admission control, autoscaler, P/D pool or scrape; `sim.engine.run`).  An
    arrival inside a step, after its scheduling and before its application, changes nothing the
    step does; sending it before applying the step is what the step-by-step engine does in the
    same order.  One that lands on a scheduling or an application at the very same instant is
    left to SimPy (its event order decides who goes first), as is everything once the loop is
    back on the clock.  `NextArrival` (`nxt`) is the cursor the loop and the arrival process share:
    its `row` is the next row not yet sent, `s` that row's time; the arrival process skips rows
    sent meanwhile (`sim.engine.arrivals.arrival_process`)."""

    __slots__ = ("arrival", "n", "nxt", "send")

    def __init__(self, arrival_s: list[float], nxt: Any, send: Callable[[int, float], None]):
        self.arrival = arrival_s
        self.n = len(arrival_s)
        self.nxt = nxt
        self.send = send

    def take_inside(self, start_s: float, end_s: float) -> bool:
        """Send the arrivals strictly inside (start_s, end_s) at their times and say True; say
        False, sending none, if one lands on start_s or end_s itself."""
        arrival, n = self.arrival, self.n
        j: int = self.nxt.row
        if j >= n:
            return True
        a = arrival[j]
        if a >= end_s:
            return a != end_s
        if a <= start_s:
            return False
        k = j + 1
        while k < n and arrival[k] < end_s:
            k += 1
        if k < n and arrival[k] == end_s:
            return False
        self._send(j, k)
        return True

    def wake(self, rep: Any, clock_s: float) -> float | None:
        """An idle loop's work, when it is the next arrival (no KV load under way) and lies within
        twice the SimPy clock: sent now with any others at its instant, as the arrival process
        would before the loop resumes; its time.  None: wait for real."""
        if getattr(rep.scheduler, "loading", None):
            return None
        arrival, n = self.arrival, self.n
        j: int = self.nxt.row
        k = j
        if j >= n or not arrival[j] <= 2.0 * clock_s:
            return None
        t = arrival[j]
        while k < n and arrival[k] == t:
            k += 1
        self._send(j, k)
        return t

    def _send(self, j: int, k: int) -> None:
        nxt = self.nxt
        for r in range(j, k):
            nxt.row = r + 1
            self.send(r, self.arrival[r])
        nxt.s = self.arrival[k] if k < self.n else float("inf")


def applied_step(rep: Replica, batch: StepBatch, start: float, dt: float, kv_state: KVState,
                 recorder: Recorder, now: float) -> list[int]:
    """Apply a step's output at `now` and record it; the rows whose last request finished, for
    the caller to report done (at `now`: only events follow from that, so after the step's row)."""
    outcome = rep.scheduler.update_from_output(batch, now)
    handoff = rep.handoff
    if handoff is not None:              # a prefill replica: its one token is not the client's
        outcome.first_tokens = []
    recorder.on_tokens(now, dt, outcome)
    done: list[int] = []
    for req in outcome.finished:
        rep.on_finished(req)
        if handoff is not None:
            handoff(req, now)
        elif recorder.on_finish(now, req):
            done.append(req.parent_id)
    recorder.on_step(rep.index, start, dt, batch, len(outcome.finished), rep.scheduler.num_running,
                     rep.num_waiting_seen, kv_state, rep.kv.usage_fraction() if outcome.finished else None)
    if rep.check_invariants:
        rep.check()
    return done


def schedule_at(rep: Replica, recorder: Recorder, t: float) -> StepBatch | None:
    """A scheduling at `t` ahead of the clock: the batch, or None when there is nothing to run
    (an empty batch is closed at once)."""
    sched = rep.scheduler
    sched.now_s = t
    batch: StepBatch | None = sched.schedule() if sched.has_work else None
    rep.num_unseen_arrivals = 0
    if batch is not None and batch.is_empty:
        sched.update_from_output(batch, t)
        batch = None
    if batch is not None and batch.admitted:
        recorder.on_admitted(t, batch.admitted)
    return batch


class AheadRun:
    """Where `sync_ahead` stopped.  `on_clock` False: the step (`batch` from `start`, `dt`, KV
    state `kv_state`) ends past what may run ahead; the engine waits for it on the clock and
    applies it.  True: the loop's clock is `t` (the engine catches up to it) and `notify` the
    rows finished there for it to report; `batch` is None when the replica has nothing to run."""

    __slots__ = ("on_clock", "batch", "start", "dt", "kv_state", "t", "notify")

    def __init__(self, on_clock: bool, batch: StepBatch | None, start: float, dt: float,
                 kv_state: KVState, t: float, notify: list[int]) -> None:
        self.on_clock = on_clock
        self.batch = batch
        self.start = start
        self.dt = dt
        self.kv_state = kv_state
        self.t = t
        self.notify = notify


def sync_ahead(rep: Replica, recorder: Recorder, batch: StepBatch, start: float, dt: float, kv_state: KVState,
               horizon_s: float, clock_s: float, inbox: Inbox | None,
               report_early: Callable[[list[int]], list[int]] | None) -> AheadRun:
    """The synchronous loop's steps that end before the next arrival (or, with an inbox, whose
    arrivals it sends), from `batch` scheduled at `start`: each applied and the next one scheduled
    at its end without an event, nothing outside this replica happening meanwhile.  Stops at a
    finish the outside must see on time (`report_early` returns the rows nobody can be told
    early), when the decode set has members (a quiet stretch may follow: planned on the clock),
    when nothing is left to run, or at a step that may not run ahead."""
    sched: SchedulerV1 = rep.scheduler
    coster: StepCoster = rep.coster
    notify: list[int] = []
    t = start + dt
    while may_run_ahead(t, horizon_s, clock_s, start, inbox):
        notify = applied_step(rep, batch, start, dt, kv_state, recorder, t)
        if notify and report_early is not None:
            notify = report_early(notify)
        if notify or sched.num_members:    # a finish the outside sees; a quiet stretch to plan
            return AheadRun(True, batch, start, dt, kv_state, t, notify)
        nb = schedule_at(rep, recorder, t)
        while nb is None and inbox is not None:   # idle: the next arrival may wake it
            a = inbox.wake(rep, clock_s)
            if a is None:
                break
            t = a
            nb = schedule_at(rep, recorder, t)
        if nb is None:
            return AheadRun(True, None, start, dt, kv_state, t, notify)
        batch = nb
        start = t
        dt = coster.step_time_s(batch)
        kv_state = sched.kv_state()
        t = start + dt
    return AheadRun(False, batch, start, dt, kv_state, t, notify)
