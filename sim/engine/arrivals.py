"""Arrivals: the process that sends each request at its time (or when a closed-loop slot frees),
a session's next turn a think time after its previous one, and the hand-over to a replica (or to
the prefill pool) through the router and the gateway's admission control."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import Any

import simpy
from simpy.events import NORMAL

from sim.admission import Admission
from sim.disaggregation import goes_to_prefill_pool
from sim.engine.disagg import PrefillPool
from sim.horizon import NextArrival
from sim.metrics import Recorder
from sim.replica import Replica
from sim.request import Request
from sim.requests_table import RequestTable
from sim.session_table import TurnLinks


def arrival_process(env: simpy.Environment, table: RequestTable, replicas: list[Replica],
                    route: Callable[[list[Replica], Request], Replica], recorder: Recorder,
                    slots: simpy.Resource | None, nxt: NextArrival,
                    slot_tokens: list[Any] | None = None, admission: Admission | None = None,
                    on_request_done: Callable[[int], None] | None = None,
                    prefill: PrefillPool | None = None, ids: list[int] | None = None,
                    links: TurnLinks | None = None) -> Generator[Any, Any, None]:
    """Send each request at its arrival time (or when a closed-loop slot frees) to a replica,
    unless the gateway's admission control rejects it.  Rows without an arrival time are session
    follow-ups, sent by `follow_up`.  `ids`: the next parallel sample's request id, shared with
    whoever else sends (follow-ups, `sim.run_ahead.Inbox`)."""
    arrival = table.arrival_s
    if ids is None:
        ids = [len(table)]
    n = len(table)
    row = 0
    while row < n:
        t = float(arrival[row])
        if t != t:
            row += 1
            continue
        nxt.s = t
        nxt.row = row
        if t > env.now:
            yield env.timeout(t - env.now)
            if nxt.row != row:    # sent meanwhile by a replica loop running ahead (`sim.run_ahead.Inbox`)
                row = nxt.row
                continue
        if slots is not None:
            token = slots.request()
            if not token.triggered:
                nxt.s = float("inf")      # it arrives when a request of this replica set finishes
                nxt.blocked = True        # (then `on_request_done` sets nxt.s to that moment)
            yield token
            nxt.blocked = False
            slot_tokens[row] = token  # type: ignore[index]
        send_request(env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, prefill,
                     links=links)
        row += 1
    nxt.s = float("inf")
    nxt.row = n


class _Armed:
    """The one event of `FollowUps` in SimPy's queue: what `Environment.step` reads of an event it
    pops (`callbacks`, then `_ok`), with no `Event.__init__` to run; a triggered, successful
    event, as a Timeout is."""

    __slots__ = ("callbacks",)
    _ok = True
    callbacks: list[Callable[[object], None]] | None


class FollowUps:
    """Sessions' next turns, each sent `think_s` after its previous turn finished.

    Hundreds of users think at once; one SimPy timeout per pending turn would keep them all in
    SimPy's event queue, whose every push and pop (each replica step's too) then compares tuples
    down a heap of that depth.  Here the pending turns wait in a heap of their own, (send time,
    event id, row), with only the earliest one armed in SimPy's queue, and `nxt.later_s` (which
    the replicas' horizons read) is its time.  The armed event carries the time and event id a
    timeout made at the finish would have had (`env.now + think_s`; an id taken from SimPy's
    counter then), so it lands in SimPy's order exactly where that timeout would: same-instant
    ties with other events break as before, and results are identical.  (SimPy 4's `Environment`
    keeps its queue as a heap of (time, priority, id, event) and its ids in a counter, `_queue`
    and `_eid`; `FollowUps.usable` checks they are there, else each turn gets its own timeout.)"""

    def __init__(self, env: simpy.Environment, send: Callable[[int], None], nxt: NextArrival):
        self.env = env
        self.send = send
        self.nxt = nxt
        self.pending: list[tuple[float, int, int]] = []      # heap of (send time, event id, row)
        self.armed: set[int] = set()                         # event ids in SimPy's queue
        self.usable = isinstance(getattr(env, "_queue", None), list) and hasattr(env, "_eid")
        self._callbacks: list[Callable[[object], None]] = [self._due]   # every armed event's (SimPy only reads it)

    def add(self, row: int, think_s: float) -> None:
        """Row `row` is sent `think_s` from now.  Its time counts in `nxt.later_s` at once: a
        replica planning a quiet stretch at this same instant must already see it."""
        env = self.env
        t = env.now + think_s                  # as Environment.schedule computes a timeout's time
        if not self.usable:
            heapq.heappush(self.pending, (t, 0, row))
            self.nxt.later_s = self.pending[0][0]
            env.timeout(think_s).callbacks.append(lambda _: self._due_plain(row))  # type: ignore[union-attr]
            return
        eid = next(env._eid)                   # type: ignore[attr-defined]
        heapq.heappush(self.pending, (t, eid, row))
        if t < self.nxt.later_s:               # the earliest now (a tie goes to the older id, armed)
            self.nxt.later_s = t
            self._arm(t, eid)

    def _arm(self, t: float, eid: int) -> None:
        ev = _Armed()
        ev.callbacks = self._callbacks
        queue: list[Any] = self.env._queue     # type: ignore[attr-defined]
        heapq.heappush(queue, (t, NORMAL, eid, ev))
        self.armed.add(eid)

    def _due(self, _: object) -> None:
        """The earliest pending turn's time (now) has come (SimPy fires armed events in its
        order, and the earliest pending turn is always armed, so the one firing is the earliest):
        send it, and arm the next earliest unless it is armed already."""
        pending = self.pending
        _, eid, row = heapq.heappop(pending)
        self.armed.discard(eid)
        if pending:
            t2, eid2, _ = pending[0]
            self.nxt.later_s = t2
            if eid2 not in self.armed:
                self._arm(t2, eid2)
        else:
            self.nxt.later_s = float("inf")
        self.send(row)

    def _due_plain(self, row: int) -> None:
        pending = self.pending
        heapq.heappop(pending)
        self.nxt.later_s = pending[0][0] if pending else float("inf")
        self.send(row)


def send_request(env: simpy.Environment, table: RequestTable, row: int, replicas: list[Replica],
          route: Callable[[list[Replica], Request], Replica], recorder: Recorder, nxt: NextArrival,
          ids: list[int], admission: Admission | None, on_request_done: Callable[[int], None] | None,
          prefill: PrefillPool | None, now_s: float = -1.0, links: TurnLinks | None = None) -> None:
    """Hand row `row` (and its parallel samples, ids from `ids[0]` on) to a replica now, or at
    `now_s` (a replica loop running ahead of the clock sends it, `sim.run_ahead.Inbox`).
    `links`: a sessions table's turns, whose block-hash chains are handed from turn to turn."""
    prompt = int(table.prompt_tokens[row])
    n = table.n_of(row)
    now = env.now if now_s < 0.0 else now_s
    recorder.on_send(row, now, prompt, n)
    nxt.count += 1
    if admission is not None and not admission.admit(now, replicas):
        recorder.on_reject(row)
        on_request_done(row)  # type: ignore[misc]
        return
    priority = table.extra.get("priority")
    prio = 0 if priority is None else int(priority[row])
    segs = table.segments_of(row)
    head, lends = (links.previous[row], links.has_next[row]) if links is not None else (-1, False)
    children = []
    for k in range(n):
        rid = row if k == 0 else ids[0]
        if k:
            ids[0] += 1
        children.append(Request(rid, now, prompt, int(table.output_tokens[row]), segs,
                                content_key=row, parent_id=row, priority=prio, head_key=head, lends_chain=lends))
    rep = route(replicas, children[0])
    if prefill is not None and goes_to_prefill_pool(prefill.setup.cfg, prompt):
        prefill.send(children[0], rep)
        return
    for req in children:
        rep.add_request(req)
