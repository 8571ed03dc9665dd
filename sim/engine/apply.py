"""Applying a step's output: the scheduler's update, the recorder's rows, finishes reported."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from sim.batch import StepBatch
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica


def apply_step(env: simpy.Environment, rep: Replica, batch: StepBatch, start: float, dt: float,
           kv_state: KVState, recorder: Recorder,
           on_request_done: Callable[[int], None]) -> None:
    for row in applied_step(rep, batch, start, dt, kv_state, recorder, env.now):
        on_request_done(row)


def applied_step(rep: Replica, batch: StepBatch, start: float, dt: float, kv_state: KVState,
             recorder: Recorder, now: float) -> list[int]:
    """Apply a step's output at `now` and record it; the rows whose last request finished, for
    the caller to report done (at `now`: only events follow from that, so after the step's row)."""
    outcome = rep.scheduler.update_from_output(batch, now)
    if rep.handoff is not None:          # a prefill replica: its one token is not the client's
        outcome.first_tokens = []
    recorder.on_tokens(now, dt, outcome)
    done: list[int] = []
    for req in outcome.finished:
        rep.on_finished(req)
        if rep.handoff is not None:
            rep.handoff(req, now)
        elif recorder.on_finish(now, req):
            done.append(req.parent_id)
    recorder.on_step(rep.index, start, dt, batch, len(outcome.finished), rep.scheduler.num_running,
                     rep.num_waiting_seen, kv_state, rep.kv.usage_fraction() if outcome.finished else None)
    if rep.check_invariants:
        rep.check()
    return done
