"""Running ahead of the SimPy clock: a replica loop may take steps and waits that end before the
next arrival without an event, keeping its own clock `now`, and catch the SimPy clock up where
the outside must see the time (`sim.engine.replica_loop`, `sim.engine.pipeline_loop`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from sim.replica import Replica


def may_run_ahead(t: float, horizon_s: float, clock_s: float) -> bool:
    """Whether a step or wait ending at `t` may pass without an event: before the next arrival,
    and at most twice the SimPy clock, where t - clock is exact (Sterbenz) so that catching up,
    clock + (t - clock), lands on `t` itself as the step-by-step engine's clock would.  (Where it
    does not, no other delay does either.)"""
    return t < horizon_s and t <= 2.0 * clock_s


def catch_up(env: simpy.Environment, now: float) -> Generator[Any, Any, None]:
    """Bring the SimPy clock to the loop's clock `now`."""
    if now > env.now:
        yield env.timeout(now - env.now)


def wait(env: simpy.Environment, now: float, delay_s: float, horizon_s: float) -> Generator[Any, Any, float]:
    """Wait `delay_s` from the loop's clock `now`: ahead of the SimPy clock if it may, else for
    real; the loop's clock after it (what SimPy's now + delay reads either way)."""
    t = now + delay_s
    if may_run_ahead(t, horizon_s, env.now):
        return t
    yield from catch_up(env, now)
    yield env.timeout(delay_s)
    return float(env.now)


def idle(env: simpy.Environment, rep: Replica, now: float) -> Generator[Any, Any, float]:
    """Catch up, then wait for work (an arrival, a KV load); the loop's clock after it."""
    yield from catch_up(env, now)
    yield rep.wait_for_work(env)
    return float(env.now)
