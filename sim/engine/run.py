"""simulate(): the processes wired together (arrivals, replicas, autoscaler, router scrapes) and
the run to its end."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim.admission import Admission
from sim.autoscaler import Autoscaler
from sim.disaggregation import PrefillPoolSetup
from sim.engine.arrivals import arrival_process, send_request
from sim.engine.disagg import PrefillPool
from sim.engine.pipeline_loop import serve_pipeline
from sim.engine.replica_loop import serve_replica
from sim.follow_ups import FollowUps
from sim.horizon import NextArrival
from sim.metrics import Recorder
from sim.replica import Replica
from sim.request import Request
from sim.requests_table import RequestTable
from sim.router import Router
from sim.run_ahead import Inbox
from sim.session_table import follow_up_links, turn_links


def autoscale_process(env: simpy.Environment, scaler: Autoscaler, replicas: list[Replica],
                      nxt: NextArrival) -> Generator[Any, Any, None]:
    """The autoscaler's loop: every interval, scrape the replicas and scale (sim.autoscaler)."""
    seen = 0
    while True:
        yield env.timeout(scaler.cfg.interval_s)
        scaler.tick(env.now, replicas, nxt.count - seen)
        seen = nxt.count


def scrape_process(env: simpy.Environment, interval_s: float, scrape: Callable[[], None]) -> Generator[Any, Any, None]:
    """The router's metrics scrape: a snapshot of every replica each `interval_s`."""
    while True:
        scrape()
        yield env.timeout(interval_s)


def simulate(table: RequestTable, replicas: list[Replica], route: Callable[[list[Replica], Request], Replica],
             recorder: Recorder, max_sim_time_s: float | None = None, quiet_stretches: bool = True,
             scrape_interval_s: float = 0.0, scrape: Callable[[], None] | None = None,
             admission: Admission | None = None, autoscaler: Autoscaler | None = None,
             prefill: PrefillPoolSetup | None = None) -> float:
    """Run to completion (or `max_sim_time_s`); returns the simulated end time in seconds.
    `quiet_stretches=False` takes every step as its own event (the reference for tests).
    With `scrape` and a positive interval, a process calls it every `scrape_interval_s` (quiet
    stretches are then off: a scrape inside one would see the state at its end)."""
    env = simpy.Environment()
    slots = simpy.Resource(env, capacity=table.max_concurrency) if table.max_concurrency else None
    slot_tokens: list[Any] = [None] * len(table) if slots is not None else []
    remaining = [len(table)]
    done = env.event()
    nxt = NextArrival()
    pool = PrefillPool(env, prefill, replicas) if prefill is not None else None
    follow = follow_up_links(table) if "think_s" in table.extra else None   # multi-turn sessions
    links = turn_links(table) if "session" in table.extra and "turn" in table.extra else None
    ids = [len(table)]

    def send(row: int) -> None:
        send_request(env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, pool,
                     links=links)

    follow_ups = FollowUps(env, send, nxt, *follow) if follow is not None else None

    def on_request_done(row: int) -> None:
        if slots is not None:
            slots.release(slot_tokens[row])
            if nxt.blocked:               # the next request is sent now, once the arrival process resumes:
                nxt.s = env.now           # no replica may plan past it meanwhile (a stretch, a run-ahead)
        remaining[0] -= 1
        if remaining[0] == 0 and not done.triggered:
            done.succeed()
        if follow_ups is not None:
            follow_ups.done(row)

    router = getattr(route, "__self__", None)
    if (isinstance(router, Router) and follow is None and admission is None and autoscaler is None
            and prefill is None and slots is None):
        nxt.look_past(router, replicas, table.arrival_s)
    env.process(arrival_process(env, table, replicas, route, recorder, slots, nxt, slot_tokens, admission,
                                on_request_done, pool, ids, links))
    scraping = scrape is not None and scrape_interval_s > 0
    if scraping:
        env.process(scrape_process(env, scrape_interval_s, scrape))  # type: ignore[arg-type]
    if autoscaler is not None:
        env.process(autoscale_process(env, autoscaler, replicas, nxt))
    # a tick inside a quiet stretch would read KV usage from its end; queue length and arrivals
    # do not change inside one, so only KV-usage scaling needs every step as its own event.  With
    # several replicas, a finish on one of them can send a request (a closed-loop slot freed, a
    # session's next turn after its think time) inside another's stretch: no stretches then
    quiet_ok = (quiet_stretches and not ((slots is not None or follow is not None) and len(replicas) > 1)
                and not scraping
                and (autoscaler is None or autoscaler.cfg.metric != "kv_usage") and pool is None)
    # a step applied ahead of the clock must not be seen by a process polling replicas (autoscaler
    # ticks) nor outlive the run's end
    run_ahead = quiet_ok and autoscaler is None and max_sim_time_s is None

    def report_early(rows: list[int]) -> list[int]:
        """Report finished rows done ahead of the clock where nobody can tell: an open loop (no
        slot to free, no next turn to send) on one replica (with several, a finish reported
        ahead could make another's earlier one look like the run's last) and not the last
        request (whose finish ends the run); the rows left to report on time."""
        if slots is not None or follow is not None or len(replicas) > 1:
            return rows
        k = min(len(rows), remaining[0] - 1)
        remaining[0] -= k
        return rows[k:]

    # an open loop on one replica: a loop running ahead sends the arrivals it passes itself
    inbox = (Inbox(table.arrival_s.tolist(), nxt, lambda row, t: send_request(
                 env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, pool, t, links))
             if run_ahead and len(replicas) == 1 and slots is None and follow is None and admission is None
             else None)
    for rep in replicas:
        if rep.pipeline is not None:
            env.process(serve_pipeline(env, rep, recorder, on_request_done, nxt if quiet_ok else None, run_ahead,
                                       report_early, inbox))
            continue
        env.process(serve_replica(env, rep, recorder, on_request_done, nxt if quiet_ok else None, run_ahead,
                                  report_early, inbox))
    if prefill is not None:
        for rep in prefill.replicas:
            env.process(serve_replica(env, rep, recorder, on_request_done, None))
    if len(table) == 0:
        return 0.0
    until: Any = done
    if max_sim_time_s is not None:
        until = simpy.AnyOf(env, [done, env.timeout(max_sim_time_s)])
    env.run(until=until)
    if autoscaler is not None:
        autoscaler.finish(env.now)
    if pool is not None:
        recorder.kv_transfer_s = pool.transfer_s
    return float(env.now)
