"""Pipeline parallelism's batch-queue loop (vLLM's `step_with_batch_queue`) as plain code: the
plain-Python half of `sim.engine.pipeline_loop`, compiled with mypyc (`setup_native.py`).  A PP
replica takes twice the steps of one without it (each stage pass is a batch), and nearly all of
them run ahead of the SimPy clock (`sim.run_ahead`): interpreted, each of those steps paid a pass
through a generator loop and two nested generators for waits that did not wait.  `PipeLoop.advance`
runs the loop until it must really wait on the clock and says how (`IDLE`, `WAIT`, `CATCH_UP`,
`STRETCH`); the engine's process yields that and calls `advance` again, which resumes where it
stopped (`resume`).  The same operations in the same order as the loop it replaces, so the same
numbers; no SimPy here.

`report_early` and `on_request_done` are the engine's callbacks (`sim.engine.run`).
"""

from __future__ import annotations

from collections.abc import Callable

from sim import quiet
from sim.batch import StepBatch
from sim.horizon import NextArrival
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.pipeline import PipelineClock
from sim.replica import Replica
from sim.run_ahead import Inbox, applied_step, may_run_ahead
from sim.scheduler_v1 import SchedulerV1

# what the engine must yield before calling `advance` again
IDLE = 0        # catch up to `now`, wait for work; then `now` = the clock
WAIT = 1        # catch up to `now`, wait `delay_s`; then `now` = the clock
CATCH_UP = 2    # catch up to `now`
STRETCH = 3     # (with an inbox: catch up to `now`), then wait until `target_s`; then `now` = the clock

# where `advance` resumes
_TOP = 0        # the loop's top
_APPLY = 1      # apply the batch popped (`batch`, `start`, `kv_state`) at `now`
_REPORT = 2     # report `notify` (the clock has caught up)
_STRETCH_END = 3  # a stretch's end reached on the clock: record it, apply its finishing batch


class PipeLoop:
    """One PP replica's batch queue: up to p batches in flight, oldest first (batch, start, done,
    KV state while it runs), the CPU's overhead for the last one ending at `cpu_free_s`, and the
    loop's clock `now` (ahead of the SimPy clock while waits are skipped)."""

    def __init__(self, rep: Replica, recorder: Recorder, on_request_done: Callable[[int], None],
                 nxt: NextArrival, quiet_ok: bool, ahead: bool,
                 report_early: Callable[[list[int]], list[int]] | None, inbox: Inbox | None,
                 now: float) -> None:
        self.rep = rep
        self.sched: SchedulerV1 = rep.scheduler
        self.pipe: PipelineClock = rep.pipeline
        self.p: int = self.pipe.num_stages
        self.index: int = rep.index
        self.recorder = recorder
        self.on_request_done = on_request_done
        self.nxt = nxt
        self.quiet_ok = quiet_ok
        self.ahead = ahead
        self.report_early = report_early
        self.inbox = inbox
        self.inflight: list[tuple[StepBatch, float, float, KVState]] = []
        self.cpu_free_s = 0.0
        self.now = now
        self.horizon_s = -1.0      # the next arrival: waits ending before it may be skipped (never if not ahead)
        self.delay_s = 0.0         # WAIT: how long
        self.target_s = 0.0        # STRETCH: its end
        self.resume = _TOP
        self.batch: StepBatch | None = None
        self.start_s = 0.0
        self.kv_state: KVState = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self.notify: list[int] = []
        self.stretch: quiet.PipeStretch | None = None
        self.num_stretches = 0             # stretches taken, the applications they recorded,
        self.num_stretch_rows = 0          # and those ending with a finishing application
        self.num_finishing_stretches = 0

    def advance(self, clock_s: float) -> int:
        """Run the loop from where it stopped until it must wait on the SimPy clock (`clock_s`,
        which does not move meanwhile); what to wait for (IDLE, WAIT, CATCH_UP, STRETCH)."""
        sched = self.sched
        pipe = self.pipe
        p = self.p
        rec = self.recorder
        rep = self.rep
        inbox = self.inbox
        r = self.resume
        self.resume = _TOP
        if r == _APPLY:
            if self._apply(clock_s):
                return CATCH_UP
        elif r == _REPORT:
            self._report(self.notify)
        elif r == _STRETCH_END:
            if self._stretch_end(clock_s):
                return CATCH_UP
        while True:
            if self.ahead:
                self.horizon_s = self.nxt.ahead_for_replica(self.index)
            if self.quiet_ok and len(self.inflight) == p - 1 and sched.ready_lanes:
                h: float = self.nxt.for_replica(self.index)
                # cheap test first: the second scheduling comes when the oldest batch is out
                # (with an inbox, a stretch that cannot run ahead waits from the loop's clock: the
                # arrival process, behind on rows the inbox sent, must catch up before the
                # stretch's event is made, so that an arrival on its last application comes first)
                st = (quiet.pipeline_stretch(rep, self.now, h, list(self.inflight),
                                             clock_s if inbox is None else self.now)
                      if self.inflight[0][2] < h else None)
                if st is not None:
                    rep.num_unseen_arrivals = 0               # the stretch's schedulings see today's queue
                    self.inflight = st.inflight
                    self.cpu_free_s = st.cpu_free_s
                    self.stretch = st
                    if inbox is not None and may_run_ahead(st.end_s, h, clock_s, self.now, inbox):
                        self.now = st.end_s                   # ahead: no event (its arrivals sent by the inbox)
                        if self._stretch_end(clock_s):
                            return CATCH_UP
                        continue
                    self.target_s = st.end_s
                    self.resume = _STRETCH_END
                    return STRETCH
            if len(self.inflight) < p and sched.has_work:
                now = self.now
                batch = sched.schedule()
                rep.num_unseen_arrivals = 0
                if batch.admitted:
                    rec.on_admitted(now, batch.admitted)
                if batch.is_empty:
                    sched.update_from_output(batch, now)   # everyone schedulable is in flight
                    if not self.inflight:
                        if self._idle(clock_s):
                            return IDLE
                        continue
                else:
                    kv_state = sched.kv_state()
                    self.cpu_free_s = now + pipe.overhead_s
                    done = pipe.launch(self.cpu_free_s, rep.coster.step_time_s(batch),
                                       batch.num_prefill_tokens + batch.num_decode_tokens)
                    self.inflight.append((batch, now, done, kv_state))
                    if len(self.inflight) < p:     # room for another batch: schedule again once the CPU is free
                        if pipe.overhead_s and self._wait(pipe.overhead_s, clock_s):
                            return WAIT
                        continue
            if not self.inflight:
                if self._idle(clock_s):
                    return IDLE
                continue
            batch, start, done, kv_state = self.inflight.pop(0)
            self.batch = batch
            self.start_s = start
            self.kv_state = kv_state
            if self.cpu_free_s > done:
                done = self.cpu_free_s
            if done > self.now and self._wait(done - self.now, clock_s):
                self.resume = _APPLY
                return WAIT
            if self._apply(clock_s):
                return CATCH_UP

    def _idle(self, clock_s: float) -> bool:
        """Out of work: with an inbox the next arrival may be it (sent now, ahead of the clock);
        True: the engine catches up and waits for work on the clock."""
        inbox = self.inbox
        a = inbox.wake(self.rep, clock_s) if inbox is not None else None
        if a is not None:
            self.now = a
            return False
        return True

    def _wait(self, delay_s: float, clock_s: float) -> bool:
        """Wait `delay_s` from `now`: ahead of the clock if it may (False), else True: the engine
        catches up and waits `delay_s` on the clock."""
        t = self.now + delay_s
        if may_run_ahead(t, self.horizon_s, clock_s, self.now, self.inbox):
            self.now = t
            return False
        self.delay_s = delay_s
        return True

    def _apply(self, clock_s: float) -> bool:
        """Apply the popped batch at `now` and report the rows it finished; True: the clock must
        catch up before they are reported."""
        batch = self.batch
        assert batch is not None
        now = self.now
        notify = applied_step(self.rep, batch, self.start_s, now - self.start_s, self.kv_state,
                              self.recorder, now)
        self.batch = None
        return self._finish(notify, clock_s)

    def _finish(self, notify: list[int], clock_s: float) -> bool:
        """Report rows an application at `now` finished: ahead of the clock those `report_early`
        allows, the others once it has caught up (True: catch up first)."""
        if notify and self.now > clock_s:
            if self.report_early is not None:
                notify = self.report_early(notify)
            if notify:
                self.notify = notify
                self.resume = _REPORT
                return True
        self._report(notify)
        return False

    def _report(self, notify: list[int]) -> None:
        for row in notify:
            self.on_request_done(row)
        self.notify = []

    def _stretch_end(self, clock_s: float) -> bool:
        """A stretch's end reached: record its applications, then apply its finishing batch (if
        any) for real; True: the clock must catch up before the finished rows are reported."""
        st = self.stretch
        assert st is not None
        self.stretch = None
        rep = self.rep
        self.recorder.on_decode_rows(self.index, st.rows, self.sched.num_running, rep.num_waiting_seen)
        self.num_stretches += 1
        self.num_stretch_rows += len(st.rows)
        fin = st.finishing
        if fin is None:
            return False
        self.num_finishing_stretches += 1
        batch, start, kv_state = fin
        now = self.now
        return self._finish(applied_step(rep, batch, start, now - start, kv_state, self.recorder, now), clock_s)
