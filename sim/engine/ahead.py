"""Running ahead of the SimPy clock: a replica loop may take steps and waits that end before the
next arrival without an event, keeping its own clock `now`, and catch the SimPy clock up where
the outside must see the time (`sim.engine.replica_loop`, `sim.engine.pipeline_loop`).  The
SimPy half; the rules, the inbox of arrivals and the steps themselves are in `sim.run_ahead`, and
the batch queue's waits in `sim.pipe_loop` (compiled)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy


def catch_up(env: simpy.Environment, now: float) -> Generator[Any, Any, None]:
    """Bring the SimPy clock to the loop's clock `now`."""
    if now > env.now:
        yield env.timeout(now - env.now)
