"""Pipeline parallelism's engine loop: vLLM's batch queue (`step_with_batch_queue`) over the stages.
The SimPy half: the loop itself is `sim.pipe_loop.PipeLoop` (compiled), which runs until it must
wait on the clock; this process yields what it asks for."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim.engine.ahead import catch_up
from sim.horizon import NextArrival
from sim.metrics import Recorder
from sim.pipe_loop import CATCH_UP, STRETCH, WAIT, PipeLoop
from sim.replica import Replica
from sim.run_ahead import Inbox


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
    p = rep.pipeline.num_stages
    quiet_ok = nxt is not None and p > 1 and getattr(sched, "lanes_on", False) and not rep.check_invariants
    ahead = run_ahead and nxt is not None
    if not ahead:
        inbox = None
    loop = PipeLoop(rep, recorder, on_request_done, nxt if nxt is not None else NextArrival(),   # (none: never read)
                    quiet_ok, ahead, report_early, inbox, env.now)
    while True:
        what = loop.advance(env.now)
        if what == STRETCH:
            if inbox is not None:
                yield from catch_up(env, loop.now)
            yield env.timeout(loop.target_s - env.now)     # (pipeline_stretch checked it lands on target_s)
            loop.now = env.now
        elif what == WAIT:
            yield from catch_up(env, loop.now)
            yield env.timeout(loop.delay_s)
            loop.now = env.now
        elif what == CATCH_UP:
            yield from catch_up(env, loop.now)
        else:
            yield from catch_up(env, loop.now)
            yield rep.wait_for_work(env)
            loop.now = env.now
