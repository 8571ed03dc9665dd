"""Pipeline parallelism's engine loop: vLLM's batch queue (`step_with_batch_queue`) over the stages."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim import quiet
from sim.batch import StepBatch
from sim.engine.ahead import catch_up, idle, wait
from sim.horizon import NextArrival
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica
from sim.run_ahead import Inbox, applied_step, may_run_ahead


def serve_pipeline(env: simpy.Environment, rep: Replica, recorder: Recorder,
                   on_request_done: Callable[[int], None], nxt: NextArrival | None = None,
                   run_ahead: bool = False,
                   report_early: Callable[[list[int]], list[int]] | None = None,
                   inbox: Inbox | None = None) -> Generator[Any, Any, None]:
    """Pipeline parallelism (vLLM's `step_with_batch_queue`): schedule a batch while fewer than
    p are in flight and the scheduler has work; otherwise wait for the oldest batch's output and
    apply it.  Each batch costs the CPU `overhead_s` before it enters stage 0, then passes the
    stages (`sim.pipeline.PipelineClock`).  A request in flight is not scheduled again until its
    output is applied (the scheduler's rule), so with few requests stages idle: the bubbles.
    With `nxt` (the next arrival), rounds in which every lane only decodes are taken at once
    (`sim.quiet.pipeline_stretch`); with `run_ahead` the loop's waits that end before the next
    arrival are not events either: `now` runs ahead of the SimPy clock (as in `serve_replica`,
    up to twice it, so that catching up lands on `now` exactly), and catches up where the
    outside must see the time: a finish it cannot report early (`report_early`), an idle wait,
    the next arrival (`sim.engine.ahead`); with an `inbox`, it runs on through arrivals, sending
    them itself (`sim.run_ahead.Inbox`)."""
    sched = rep.scheduler
    pipe = rep.pipeline
    p = pipe.num_stages
    inflight: deque[tuple[StepBatch, float, float, KVState]] = deque()
    cpu_free_s = 0.0          # the CPU's overhead for the last batch ends here
    quiet_ok = nxt is not None and p > 1 and getattr(sched, "lanes_on", False) and not rep.check_invariants
    ahead = run_ahead and nxt is not None
    if not ahead:
        inbox = None
    now = env.now             # the loop's clock (ahead of env.now while waits are skipped)
    horizon = -1.0            # the next arrival: waits ending before it may be skipped (never if not ahead)
    while True:
        if ahead:
            horizon = nxt.ahead_for_replica(rep.index)  # type: ignore[union-attr]
        if quiet_ok and len(inflight) == p - 1 and sched.ready_lanes:
            h = nxt.for_replica(rep.index)  # type: ignore[union-attr]
            # cheap test first: the second scheduling comes when the oldest batch is out
            # (with an inbox, a stretch that cannot run ahead waits from the loop's clock: the
            # arrival process, behind on rows the inbox sent, must catch up before the stretch's
            # event is made, so that an arrival on its last application comes first, as it would)
            st = (quiet.pipeline_stretch(rep, now, h, list(inflight), env.now if inbox is None else now)
                  if inflight[0][2] < h else None)
            if st is not None:
                rep.num_unseen_arrivals = 0               # the stretch's schedulings see today's queue
                inflight = deque(st.inflight)
                cpu_free_s = st.cpu_free_s
                if inbox is not None and may_run_ahead(st.end_s, h, env.now, now, inbox):
                    now = st.end_s                        # ahead: no event (its arrivals sent by the inbox)
                else:
                    if inbox is not None:
                        yield from catch_up(env, now)
                    yield env.timeout(st.end_s - env.now)     # (pipeline_stretch checked it lands on end_s)
                    now = env.now
                recorder.on_decode_rows(rep.index, st.rows, sched.num_running, rep.num_waiting_seen)
                if st.finishing is not None:          # its last application finishes members: for real
                    batch, start, kv_state = st.finishing
                    yield from finish(env, applied_step(rep, batch, start, now - start, kv_state, recorder, now),
                                      now, report_early, on_request_done)
                continue
        if len(inflight) < p and sched.has_work:
            batch = sched.schedule()
            rep.num_unseen_arrivals = 0
            if batch.admitted:
                recorder.on_admitted(now, batch.admitted)
            if batch.is_empty:
                sched.update_from_output(batch, now)   # everyone schedulable is in flight
                if not inflight:
                    now = yield from idle(env, rep, now, inbox)
                    continue
            else:
                start = now
                kv_state = sched.kv_state()
                cpu_free_s = start + pipe.overhead_s
                done = pipe.launch(cpu_free_s, rep.coster.step_time_s(batch),
                                   batch.num_prefill_tokens + batch.num_decode_tokens)
                inflight.append((batch, start, done, kv_state))
                if len(inflight) < p:      # room for another batch: schedule again once the CPU is free
                    if pipe.overhead_s:
                        now = yield from wait(env, now, pipe.overhead_s, horizon, inbox)
                    continue
        if not inflight:
            now = yield from idle(env, rep, now, inbox)
            continue
        batch, start, done, kv_state = inflight.popleft()
        if cpu_free_s > done:
            done = cpu_free_s
        if done > now:
            now = yield from wait(env, now, done - now, horizon, inbox)
        yield from finish(env, applied_step(rep, batch, start, now - start, kv_state, recorder, now), now,
                          report_early, on_request_done)


def finish(env: simpy.Environment, notify: list[int], now: float,
           report_early: Callable[[list[int]], list[int]] | None,
           on_request_done: Callable[[int], None]) -> Generator[Any, Any, None]:
    """Report the rows an application at the loop's clock `now` finished: ahead of the SimPy
    clock those `report_early` allows, the others once it has caught up."""
    if notify and now > env.now:                 # ahead: what the outside may learn early
        if report_early is not None:
            notify = report_early(notify)
        if notify:
            yield from catch_up(env, now)
    for row in notify:
        on_request_done(row)
