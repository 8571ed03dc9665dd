"""Arrivals: the process that sends each request at its time (or when a closed-loop slot frees),
a session's next turn a think time after its previous one, and the hand-over to a replica (or to
the prefill pool) through the router and the gateway's admission control."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim.admission import Admission
from sim.disaggregation import goes_to_prefill_pool
from sim.engine.disagg import PrefillPool
from sim.horizon import NextArrival
from sim.metrics import Recorder
from sim.replica import Replica
from sim.request import Request
from sim.requests_table import RequestTable


def arrival_process(env: simpy.Environment, table: RequestTable, replicas: list[Replica],
                    route: Callable[[list[Replica], Request], Replica], recorder: Recorder,
                    slots: simpy.Resource | None, nxt: NextArrival,
                    slot_tokens: list[Any] | None = None, admission: Admission | None = None,
                    on_request_done: Callable[[int], None] | None = None,
                    prefill: PrefillPool | None = None, ids: list[int] | None = None) -> Generator[Any, Any, None]:
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
        send_request(env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, prefill)
        row += 1
    nxt.s = float("inf")
    nxt.row = n


def follow_up(env: simpy.Environment, row: int, think_s: float, send: Callable[[int], None],
              nxt: NextArrival) -> None:
    """A session's next turn: sent `think_s` after the previous turn finished (now), by a timeout
    event's callback (no process: one event per turn, not three).  The send time enters
    `nxt.later` at once: a replica planning a quiet stretch at this same instant must already see it."""
    heapq.heappush(nxt.later, env.now + think_s)
    env.timeout(think_s).callbacks.append(lambda _: _follow_up_due(row, send, nxt))  # type: ignore[union-attr]


def _follow_up_due(row: int, send: Callable[[int], None], nxt: NextArrival) -> None:
    heapq.heappop(nxt.later)
    send(row)


def send_request(env: simpy.Environment, table: RequestTable, row: int, replicas: list[Replica],
          route: Callable[[list[Replica], Request], Replica], recorder: Recorder, nxt: NextArrival,
          ids: list[int], admission: Admission | None, on_request_done: Callable[[int], None] | None,
          prefill: PrefillPool | None, now_s: float = -1.0) -> None:
    """Hand row `row` (and its parallel samples, ids from `ids[0]` on) to a replica now, or at
    `now_s` (a replica loop running ahead of the clock sends it, `sim.run_ahead.Inbox`)."""
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
    children = []
    for k in range(n):
        rid = row if k == 0 else ids[0]
        if k:
            ids[0] += 1
        children.append(Request(rid, now, prompt, int(table.output_tokens[row]), segs,
                                content_key=row, parent_id=row, priority=prio))
    rep = route(replicas, children[0])
    if prefill is not None and goes_to_prefill_pool(prefill.setup.cfg, prompt):
        prefill.send(children[0], rep)
        return
    for req in children:
        rep.add_request(req)
