"""One replica's engine loop (vLLM's EngineCore: schedule, execute, update_from_output), sync and
async, with quiet stretches (`sim.quiet`) and, sync, steps run ahead of the clock."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim import quiet
from sim import scheduler_quiet as sq
from sim.batch import StepBatch
from sim.engine.ahead import catch_up
from sim.engine.apply import apply_step
from sim.horizon import NextArrival
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica
from sim.run_ahead import Inbox, sync_ahead
from sim.scheduler_v1 import SchedulerV1


def serve_replica(env: simpy.Environment, rep: Replica, recorder: Recorder,
                  on_request_done: Callable[[int], None], nxt: NextArrival | None = None,
                  run_ahead: bool = False,
                  report_early: Callable[[list[int]], list[int]] | None = None,
                  inbox: Inbox | None = None) -> Generator[Any, Any, None]:
    """One engine iteration per loop: schedule, spend the step time, apply the results.
    With `nxt` (the next arrival), runs of decode-only steps are taken at once (`sim.quiet`), and
    with `run_ahead` (sync scheduling, nothing outside the replicas polling their state) so are
    any steps that end before the next arrival, up to the first that finishes a request the
    outside must see finish on time (`report_early(rows)` reports those nobody can tell early and
    returns the rest); with an `inbox` too, steps are run ahead through arrivals (`Inbox`)."""
    sched = rep.scheduler
    async_ = rep.async_scheduling
    quiet_ok = nxt is not None and isinstance(sched, SchedulerV1)
    run_ahead = run_ahead and quiet_ok and not async_
    if not run_ahead:
        inbox = None
    pending: StepBatch | None = None
    pending_start = 0.0
    pending_dt = 0.0
    while True:
        if quiet_ok and sched.num_members:
            horizon = nxt.for_replica(rep.index)  # type: ignore[union-attr]
            stretch = (quiet.plan_async(rep, env.now, pending_start, pending_dt, horizon, True,
                                        bool(pending.samplers))
                       if async_ and pending is not None else
                       None if async_ else quiet.plan_sync(rep, env.now, horizon, True))
            if stretch is not None:
                first = pending if async_ and pending is not None and pending.samplers else None
                if first is not None:     # the step in flight hands new members their tokens: apply it for real
                    e0 = pending_start + pending_dt
                    recorder.on_tokens(e0, pending_dt, sched.update_from_output(first, e0))
                m = len(stretch.durations)
                states = sq.advance_quiet(sched, m, stretch.finishes, stretch.starts[m - 1] if m > 1 else -1.0)
                rep.num_unseen_arrivals = 0               # the stretch's schedulings see today's queue
                if async_:
                    pending = sq.quiet_batch(sched)
                    if pending.is_empty:                  # everyone left: the last scheduling made an empty batch
                        sched.update_from_output(pending, stretch.starts[m - 1])
                        pending = None
                yield env.timeout(stretch.end_s - env.now)
                sched.last_update_s = env.now
                if first is not None:
                    recorder.on_step(rep.index, stretch.starts[0], stretch.durations[0], first, 0,
                                     sched.num_running, rep.num_waiting_seen, states[0])
                if stretch.finishes:
                    finish_stretch(env, rep, recorder, stretch, states, on_request_done, 1 if first is not None else 0)
                else:
                    quiet.record(rep, recorder, stretch, states, 1 if first is not None else 0)
                if async_:
                    pending_start, pending_dt = stretch.end_s, stretch.pending_dt
                continue
        sched.now_s = env.now                      # KV offloading: when loads start and finish
        batch = sched.schedule() if sched.has_work else None
        rep.num_unseen_arrivals = 0
        if batch is not None and batch.is_empty:
            sched.update_from_output(batch, env.now)   # closes the (empty) batch
            batch = None
        if batch is not None and batch.admitted:
            recorder.on_admitted(env.now, batch.admitted)
        if not async_:
            if batch is None:
                yield rep.wait_for_work(env)
                continue
            start = env.now
            dt = rep.coster.step_time_s(batch)
            kv_state = sched.kv_state()
            if run_ahead:
                # steps that end before the next arrival (or, with an inbox, whose arrivals it
                # sends): applied and the next one scheduled at their end without an event,
                # nothing outside this replica happening meanwhile (`sim.run_ahead.sync_ahead`)
                run = sync_ahead(rep, recorder, batch, start, dt, kv_state,
                                 nxt.ahead_for_replica(rep.index), env.now, inbox, report_early)  # type: ignore[union-attr]
                batch, t, notify = run.batch, run.t, run.notify
                if not run.on_clock:                   # this step ends past the next arrival (or 2 x now)
                    assert batch is not None
                    yield from catch_up(env, run.start)   # to its start first (exact), then its dt
                    yield env.timeout(run.dt)
                    apply_step(env, rep, batch, run.start, run.dt, run.kv_state, recorder, on_request_done)
                    continue
                yield from catch_up(env, t)
                for row in notify:
                    on_request_done(row)
                if batch is None and not notify and not sched.num_members:
                    yield rep.wait_for_work(env)
                continue
            yield env.timeout(dt)
            apply_step(env, rep, batch, start, dt, kv_state, recorder, on_request_done)
            continue
        # async: the batch just scheduled runs after the one in flight
        applied = pending is not None
        if pending is not None:
            kv_state = sched.kv_state()
            remaining = pending_start + pending_dt - env.now
            if remaining > 0:
                yield env.timeout(remaining)
            apply_step(env, rep, pending, pending_start, pending_dt, kv_state, recorder, on_request_done)
            pending = None
        if batch is None:
            if not applied:
                yield rep.wait_for_work(env)
            continue
        pending, pending_start, pending_dt = batch, env.now, rep.coster.step_time_s(batch)


def finish_stretch(env: simpy.Environment, rep: Replica, recorder: Recorder, stretch: quiet.Stretch,
                    states: list[KVState], on_request_done: Callable[[int], None], first: int) -> None:
    """Record a finishing quiet stretch at its end: its steps but the last as quiet steps, then
    the last step's application as `_apply` makes it: the members it finishes free their blocks,
    then the step's row with the running count and KV usage after them.  `first`: steps already
    recorded (the step in flight, applied for real)."""
    sched = rep.scheduler
    m = len(stretch.durations)
    d = stretch.members
    quiet.record(rep, recorder, stretch, states, first, m - 1)
    now = env.now
    finished = sq.quiet_finish(sched, now)
    for req in finished:
        rep.on_finished(req)
        if recorder.on_finish(now, req):
            on_request_done(req.parent_id)
    recorder.on_decode_step(rep.index, stretch.starts[m - 1], stretch.durations[m - 1], d, sched.num_running,
                            rep.num_waiting_seen, states[m - 1], len(finished),
                            rep.kv.usage_fraction() if finished else None)
