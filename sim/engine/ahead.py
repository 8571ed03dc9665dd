"""Running ahead of the SimPy clock: a replica loop may take steps and waits that end before the
next arrival without an event, keeping its own clock `now`, and catch the SimPy clock up where
the outside must see the time (`sim.engine.replica_loop`, `sim.engine.pipeline_loop`)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim.horizon import NextArrival
from sim.replica import Replica


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


class Inbox:
    """The arrivals a lone replica's loop running ahead of the clock sends itself, at their own
    times, instead of stopping at each (an open loop on one replica, with nothing else reading
    the time: no admission control, autoscaler, P/D pool or scrape; `sim.engine.run`).  An
    arrival inside a step, after its scheduling and before its application, changes nothing the
    step does; sending it before applying the step is what the step-by-step engine does in the
    same order.  One that lands on a scheduling or an application at the very same instant is
    left to SimPy (its event order decides who goes first), as is everything once the loop is
    back on the clock.  `NextArrival` is the cursor the loop and the arrival process share: its
    `row` is the next row not yet sent, `s` that row's time; the arrival process skips rows sent
    meanwhile (`sim.engine.arrivals.arrival_process`)."""

    __slots__ = ("arrival", "n", "nxt", "send")

    def __init__(self, arrival_s: list[float], nxt: NextArrival, send: Callable[[int, float], None]):
        self.arrival = arrival_s
        self.n = len(arrival_s)
        self.nxt = nxt
        self.send = send

    def take_inside(self, start_s: float, end_s: float) -> bool:
        """Send the arrivals strictly inside (start_s, end_s) at their times and say True; say
        False, sending none, if one lands on start_s or end_s itself."""
        arrival, n, nxt = self.arrival, self.n, self.nxt
        j = nxt.row
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

    def wake(self, rep: Replica, clock_s: float) -> float | None:
        """An idle loop's work, when it is the next arrival (no KV load under way) and lies within
        twice the SimPy clock: sent now with any others at its instant, as the arrival process
        would before the loop resumes; its time.  None: wait for real."""
        if getattr(rep.scheduler, "loading", None):
            return None
        arrival, n = self.arrival, self.n
        j = k = self.nxt.row
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
