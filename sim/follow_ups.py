"""Sessions' next turns, each sent `think_s` after its previous turn finished: the pending turns
and the one SimPy event that waits for the earliest of them.

Part of the engine (`sim.engine.run` makes one per sessions run, `sim.engine.arrivals` sends the
turns), kept in a module of its own so that mypyc compiles it (`setup_native.py`): it runs once
per turn in a 100k-turn run.  It yields nothing; it places an event in SimPy's queue the way
`Environment.schedule` does.

Hundreds of users think at once; one SimPy timeout per pending turn would keep them all in
SimPy's event queue, whose every push and pop (each replica step's too) then compares tuples down a
heap of that depth.  Here the pending turns wait in a heap of their own, (send time, event id,
row, armed), and only a turn that is or was the earliest has its event in SimPy's queue (armed);
`nxt.later_s` (which the replicas' horizons read) is the earliest's time.  The armed event carries the time and event id a timeout made at the
finish would have had (`env.now + think_s`; an id taken from SimPy's counter then), so it lands in
SimPy's order exactly where that timeout would: same-instant ties with other events break as
before, and results are identical.  (SimPy 4's `Environment` keeps its queue as a heap of (time,
priority, id, event) in `_queue` and its ids in a counter, `_eid`, both made once, and its clock
in `_now`; `FollowUps.usable` checks they are there, else each turn gets its own timeout.)
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from typing import Any

from sim.horizon import NextArrival

NORMAL = 1           # SimPy's priority of a timeout (simpy.events.NORMAL; `sim.engine` checks it)


class Armed:
    """The one event of `FollowUps` in SimPy's queue: what `Environment.step` reads of an event it
    pops (`callbacks`, which it sets to None, then `_ok`), with no `Event.__init__` to run; a
    triggered, successful event, as a Timeout is."""

    def __init__(self, callbacks: list[Callable[[object], None]]) -> None:
        self.callbacks: list[Callable[[object], None]] | None = callbacks
        self._ok = True


class FollowUps:
    """The pending next turns of a sessions run: `follow[row]` is the row sent `think_s[row]`
    after `row` finishes (-1: none; `think_s[row]` is the think time *after* the row, its
    follower's: `sim.session_table.follow_up_links`), `send(row)` sends one."""

    def __init__(self, env: Any, send: Callable[[int], None], nxt: NextArrival, follow: array[int],
                 think_s: array[float]) -> None:
        self.env = env
        self.send = send
        self.nxt = nxt
        self.follow = follow
        self.think_s = think_s
        # heap of (send time, event id, row, armed: its event is in SimPy's queue); an entry is
        # armed when it is the earliest at its insertion or becomes the earliest after a send
        self.pending: list[tuple[float, int, int, bool]] = []
        self.usable = (isinstance(getattr(env, "_queue", None), list) and hasattr(env, "_eid")
                       and isinstance(getattr(env, "_now", None), float | int))
        self.queue: list[Any] = env._queue if self.usable else []   # SimPy's (made once per environment)
        self.eids: Any = env._eid if self.usable else None
        self._callbacks: list[Callable[[object], None]] = [self._due]   # every armed event's (SimPy only reads it)

    def done(self, row: int) -> None:
        """Row `row` finished now: its user's next turn, if any, waits its think time."""
        nxt_row: int = self.follow[row]
        if nxt_row >= 0:
            self.add(nxt_row, self.think_s[row])

    def add(self, row: int, think_s: float) -> None:
        """Row `row` is sent `think_s` from now.  Its time counts in `nxt.later_s` at once: a
        replica planning a quiet stretch at this same instant must already see it."""
        env = self.env
        if not self.usable:
            heapq.heappush(self.pending, (env.now + think_s, 0, row, False))
            self.nxt.later_s = self.pending[0][0]
            env.timeout(think_s).callbacks.append(lambda _: self._due_plain(row))
            return
        t: float = env._now + think_s          # as Environment.schedule computes a timeout's time
        eid: int = next(self.eids)
        armed = t < self.nxt.later_s           # the earliest now (a tie goes to the older id, armed)
        heapq.heappush(self.pending, (t, eid, row, armed))
        if armed:
            self.nxt.later_s = t
            self._arm(t, eid)

    def _arm(self, t: float, eid: int) -> None:
        heapq.heappush(self.queue, (t, NORMAL, eid, Armed(self._callbacks)))

    def _due(self, _: object) -> None:
        """The earliest pending turn's time (now) has come (SimPy fires armed events in its
        order, and the earliest pending turn is always armed, so the one firing is the earliest):
        send it, and arm the next earliest unless it is armed already."""
        pending = self.pending
        row = heapq.heappop(pending)[2]
        if pending:
            t2, eid2, row2, armed = pending[0]
            self.nxt.later_s = t2
            if not armed:
                pending[0] = (t2, eid2, row2, True)   # the root for one of equal key: still a heap
                self._arm(t2, eid2)
        else:
            self.nxt.later_s = float("inf")
        self.send(row)

    def _due_plain(self, row: int) -> None:
        pending = self.pending
        heapq.heappop(pending)
        self.nxt.later_s = pending[0][0] if pending else float("inf")
        self.send(row)
