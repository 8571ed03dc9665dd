"""Arrivals: the process that sends each request at its time (or when a closed-loop slot frees),
and the hand-over to a replica (or to the prefill pool) through the router and the gateway's
admission control.  A session's next turn, sent a think time after its previous one finishes,
waits in `sim.follow_ups.FollowUps` (compiled) and is handed over here too."""

from __future__ import annotations

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
    follow-ups, sent by `sim.follow_ups.FollowUps`.  `ids`: the next parallel sample's request id,
    shared with whoever else sends (follow-ups, `sim.run_ahead.Inbox`)."""
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
        # (content key, parent id, priority, head key, lends chain) by position: a compiled
        # __init__ parses keywords by name on every call
        children.append(Request(rid, now, prompt, int(table.output_tokens[row]), segs, row, row, prio, head, lends))
    rep = route(replicas, children[0])
    if prefill is not None and goes_to_prefill_pool(prefill.setup.cfg, prompt):
        prefill.send(children[0], rep)
        return
    for req in children:
        rep.add_request(req)
