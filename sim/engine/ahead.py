"""Running ahead of the SimPy clock: a replica loop may take steps and waits that end before the
next arrival without an event, keeping its own clock `now`, and catch the SimPy clock up where
the outside must see the time (`sim.engine.replica_loop`, `sim.engine.pipeline_loop`).  The
SimPy half; the rules, the inbox of arrivals and the steps themselves are in `sim.run_ahead`
(compiled)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from sim.replica import Replica
from sim.run_ahead import Inbox, may_run_ahead


def catch_up(env: simpy.Environment, now: float) -> Generator[Any, Any, None]:
    """Bring the SimPy clock to the loop's clock `now`."""
    if now > env.now:
        yield env.timeout(now - env.now)


def wait(env: simpy.Environment, now: float, delay_s: float, horizon_s: float,
         inbox: Inbox | None = None) -> Generator[Any, Any, float]:
    """Wait `delay_s` from the loop's clock `now`: ahead of the SimPy clock if it may (with an
    inbox, sending the arrivals inside the wait), else for real; the loop's clock after it (what
    SimPy's now + delay reads either way)."""
    t = now + delay_s
    if may_run_ahead(t, horizon_s, env.now, now, inbox):
        return t
    yield from catch_up(env, now)
    yield env.timeout(delay_s)
    return float(env.now)


def idle(env: simpy.Environment, rep: Replica, now: float, inbox: Inbox | None = None) -> Generator[Any, Any, float]:
    """Catch up, then wait for work (an arrival, a KV load); the loop's clock after it.  With an
    inbox and no KV load under way, the next arrival is the work: sent at its time, ahead of the
    clock if it may."""
    a = inbox.wake(rep, env.now) if inbox is not None else None
    if a is not None:
        return a
    yield from catch_up(env, now)
    yield rep.wait_for_work(env)
    return float(env.now)
