"""Applying a step's output on the clock: the scheduler's update and the recorder's rows
(`sim.run_ahead.applied_step`), then the finishes reported."""

from __future__ import annotations

from collections.abc import Callable

import simpy

from sim.batch import StepBatch
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica
from sim.run_ahead import applied_step


def apply_step(env: simpy.Environment, rep: Replica, batch: StepBatch, start: float, dt: float,
           kv_state: KVState, recorder: Recorder,
           on_request_done: Callable[[int], None]) -> None:
    for row in applied_step(rep, batch, start, dt, kv_state, recorder, env.now):
        on_request_done(row)
