"""The SimPy model: an arrival process feeding a router, and one process per engine replica.

This is the only module that yields.  Each replica process reads like vLLM's EngineCore loop:

    sync  (vLLM CPU build, `async_scheduling=False`):  schedule -> execute -> update_from_output
    async (vLLM GPU default, `AsyncScheduler` + a batch queue of depth 2):
          schedule(k+1) while step k executes -> wait for step k -> update_from_output(k)

so in async mode a request arriving during step k is first seen when step k+2 is scheduled, and
blocks freed by step k's finished requests are first reusable by step k+2.  There are no
per-token events: one SimPy timeout per engine step (plus one per arrival).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import simpy

from sim import quiet
from sim import scheduler_quiet as sq
from sim.admission import Admission
from sim.autoscaler import Autoscaler
from sim.batch import StepBatch
from sim.disaggregation import PrefillPoolSetup, goes_to_prefill_pool, transfer_time_s
from sim.horizon import NextArrival
from sim.kv_state import KVState
from sim.metrics import Recorder
from sim.replica import Replica
from sim.request import Request
from sim.requests_table import RequestTable
from sim.router import Router
from sim.scheduler_v1 import SchedulerV1
from sim.sessions import follow_up_rows


def arrival_process(env: simpy.Environment, table: RequestTable, replicas: list[Replica],
                    route: Callable[[list[Replica], Request], Replica], recorder: Recorder,
                    slots: simpy.Resource | None, nxt: NextArrival,
                    slot_tokens: list[Any] | None = None, admission: Admission | None = None,
                    on_request_done: Callable[[int], None] | None = None,
                    prefill: PrefillPool | None = None) -> Generator[Any, Any, None]:
    """Send each request at its arrival time (or when a closed-loop slot frees) to a replica,
    unless the gateway's admission control rejects it.  Rows without an arrival time are session
    follow-ups, sent by `follow_up`."""
    arrival = table.arrival_s
    ids = [len(table)]
    for row in range(len(table)):
        t = float(arrival[row])
        if t != t:
            continue
        nxt.s = t
        nxt.row = row
        if t > env.now:
            yield env.timeout(t - env.now)
        if slots is not None:
            token = slots.request()
            if not token.triggered:
                nxt.s = float("inf")      # it arrives when a request of this replica set finishes
                nxt.blocked = True        # (then `on_request_done` sets nxt.s to that moment)
            yield token
            nxt.blocked = False
            slot_tokens[row] = token  # type: ignore[index]
        _send(env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, prefill)
    nxt.s = float("inf")


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


def _send(env: simpy.Environment, table: RequestTable, row: int, replicas: list[Replica],
          route: Callable[[list[Replica], Request], Replica], recorder: Recorder, nxt: NextArrival,
          ids: list[int], admission: Admission | None, on_request_done: Callable[[int], None] | None,
          prefill: PrefillPool | None) -> None:
    """Hand row `row` (and its parallel samples, ids from `ids[0]` on) to a replica now."""
    prompt = int(table.prompt_tokens[row])
    n = table.n_of(row)
    recorder.on_send(row, env.now, prompt, n)
    nxt.count += 1
    if admission is not None and not admission.admit(env.now, replicas):
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
        children.append(Request(rid, env.now, prompt, int(table.output_tokens[row]), segs,
                                content_key=row, parent_id=row, priority=prio))
    rep = route(replicas, children[0])
    if prefill is not None and goes_to_prefill_pool(prefill.setup.cfg, prompt):
        prefill.send(children[0], rep)
        return
    for req in children:
        rep.add_request(req)


class PrefillPool:
    """P/D disaggregation at run time (sim.disaggregation): the prefill leg of each request on a
    prefill replica, the KV transfer into the decode replica chosen at arrival (one transfer at a
    time per decode replica), then the decode leg."""

    def __init__(self, env: simpy.Environment, setup: PrefillPoolSetup, decode: list[Replica]):
        self.env = env
        self.setup = setup
        self.links = [simpy.Resource(env, capacity=1) for _ in decode]
        self.legs: dict[int, tuple[Request, Replica]] = {}      # req_id -> (decode leg, its replica)
        self.transfer_s: list[float] = []
        for rep in setup.replicas:
            rep.handoff = self.handoff

    def send(self, req: Request, decode_rep: Replica) -> None:
        decode_rep.outstanding_tokens += req.num_prompt_tokens + req.max_tokens
        self.legs[req.req_id] = (req, decode_rep)
        p_leg = Request(req.req_id, req.arrival_s, req.num_prompt_tokens, 1, req.segments,
                        content_key=req.content_key, parent_id=req.parent_id, priority=req.priority)
        self.setup.route(self.setup.replicas, p_leg).add_request(p_leg)

    def handoff(self, p_leg: Request, now_s: float) -> None:
        self.env.process(self._transfer(p_leg))

    def _transfer(self, p_leg: Request) -> Generator[Any, Any, None]:
        req, rep = self.legs.pop(p_leg.req_id)
        t0 = self.env.now
        with self.links[rep.index].request() as turn:
            yield turn
            yield self.env.timeout(transfer_time_s(self.setup.cfg, req.num_prompt_tokens,
                                                   self.setup.kv_bytes_per_token_per_rank))
        self.transfer_s.append(self.env.now - t0)
        req.num_computed = req.num_prompt_tokens - 1      # the KV is here; the last prompt token is recomputed
        req.prefix_hit_tokens = max(p_leg.prefix_hit_tokens, 0)
        rep.add_request(req, counted=True)


def serve_replica(env: simpy.Environment, rep: Replica, recorder: Recorder,
                  on_request_done: Callable[[int], None], nxt: NextArrival | None = None,
                  run_ahead: bool = False,
                  done_early: Callable[[int], bool] | None = None) -> Generator[Any, Any, None]:
    """One engine iteration per loop: schedule, spend the step time, apply the results.
    With `nxt` (the next arrival), runs of decode-only steps are taken at once (`sim.quiet`), and
    with `run_ahead` (sync scheduling, nothing outside the replicas polling their state) so are
    any steps that end before the next arrival, up to the first that finishes a request the
    outside must see finish on time (`done_early(row)`: False, or reports it done at once)."""
    sched = rep.scheduler
    async_ = rep.async_scheduling
    quiet_ok = nxt is not None and isinstance(sched, SchedulerV1)
    run_ahead = run_ahead and quiet_ok and not async_
    pending: StepBatch | None = None
    pending_start = 0.0
    pending_dt = 0.0
    while True:
        if quiet_ok and sched.num_members:
            horizon = nxt.for_replica(rep.index)  # type: ignore[union-attr]
            stretch = (quiet.plan_async(rep, env.now, pending_start, pending_dt, horizon, True,
                                        bool(pending.samplers))
                       if async_ and pending is not None else
                       None if async_ else quiet.plan_sync(rep, env.now, horizon, True))
            if stretch is not None:
                first = pending if async_ and pending is not None and pending.samplers else None
                if first is not None:     # the step in flight hands new members their tokens: apply it for real
                    e0 = pending_start + pending_dt
                    recorder.on_tokens(e0, pending_dt, sched.update_from_output(first, e0))
                m = len(stretch.durations)
                states = sq.advance_quiet(sched, m, stretch.finishes, stretch.starts[m - 1] if m > 1 else -1.0)
                rep.num_unseen_arrivals = 0               # the stretch's schedulings see today's queue
                if async_:
                    pending = sq.quiet_batch(sched)
                    if pending.is_empty:                  # everyone left: the last scheduling made an empty batch
                        sched.update_from_output(pending, stretch.starts[m - 1])
                        pending = None
                yield env.timeout(stretch.end_s - env.now)
                sched.last_update_s = env.now
                if first is not None:
                    recorder.on_step(rep.index, stretch.starts[0], stretch.durations[0], first, 0,
                                     sched.num_running, rep.num_waiting_seen, states[0])
                if stretch.finishes:
                    _finish_stretch(env, rep, recorder, stretch, states, on_request_done, 1 if first is not None else 0)
                else:
                    quiet.record(rep, recorder, stretch, states, 1 if first is not None else 0)
                if async_:
                    pending_start, pending_dt = stretch.end_s, stretch.pending_dt
                continue
        sched.now_s = env.now                      # KV offloading: when loads start and finish
        batch = sched.schedule() if sched.has_work else None
        rep.num_unseen_arrivals = 0
        if batch is not None and batch.is_empty:
            sched.update_from_output(batch, env.now)   # closes the (empty) batch
            batch = None
        if batch is not None and batch.admitted:
            recorder.on_admitted(env.now, batch.admitted)
        if not async_:
            if batch is None:
                yield rep.wait_for_work(env)
                continue
            start = env.now
            dt = rep.coster.step_time_s(batch)
            kv_state = rep.kv_state()
            if run_ahead:
                # steps that end before the next arrival: applied and the next one scheduled at
                # their end without an event, nothing outside this replica happening meanwhile.
                # Only up to twice the clock: then t - now is exact (Sterbenz) and the wake-up
                # now + (t - now) lands on t itself, as the step-by-step engine's clock would.
                horizon = nxt.ahead_for_replica(rep.index)  # type: ignore[union-attr]
                notify: list[int] = []
                t = start + dt
                while t < horizon and t <= 2.0 * env.now:
                    notify = _applied(rep, batch, start, dt, kv_state, recorder, t)
                    if notify:
                        k = 0
                        while k < len(notify) and done_early is not None and done_early(notify[k]):
                            k += 1
                        notify = notify[k:]
                        if notify:                     # a finish the outside sees: report it on time
                            break
                    if sched.num_members:              # a quiet stretch may follow: plan it at real time
                        break
                    sched.now_s = t
                    batch = sched.schedule() if sched.has_work else None
                    rep.num_unseen_arrivals = 0
                    if batch is not None and batch.is_empty:
                        sched.update_from_output(batch, t)
                        batch = None
                    if batch is None:
                        break
                    if batch.admitted:
                        recorder.on_admitted(t, batch.admitted)
                    start = t
                    dt = rep.coster.step_time_s(batch)
                    kv_state = rep.kv_state()
                    t = start + dt
                else:                                  # this step ends past the next arrival (or 2 x now)
                    if start > env.now:                # to its start first (<= 2 x now: exact), then its dt
                        yield env.timeout(start - env.now)
                    yield env.timeout(dt)
                    _apply(env, rep, batch, start, dt, kv_state, recorder, on_request_done)
                    continue
                yield env.timeout(t - env.now)
                for row in notify:
                    on_request_done(row)
                if batch is None and not notify and not sched.num_members:
                    yield rep.wait_for_work(env)
                continue
            yield env.timeout(dt)
            _apply(env, rep, batch, start, dt, kv_state, recorder, on_request_done)
            continue
        # async: the batch just scheduled runs after the one in flight
        applied = pending is not None
        if pending is not None:
            kv_state = rep.kv_state()
            remaining = pending_start + pending_dt - env.now
            if remaining > 0:
                yield env.timeout(remaining)
            _apply(env, rep, pending, pending_start, pending_dt, kv_state, recorder, on_request_done)
            pending = None
        if batch is None:
            if not applied:
                yield rep.wait_for_work(env)
            continue
        pending, pending_start, pending_dt = batch, env.now, rep.coster.step_time_s(batch)


def _finish_stretch(env: simpy.Environment, rep: Replica, recorder: Recorder, stretch: quiet.Stretch,
                    states: list[KVState], on_request_done: Callable[[int], None], first: int) -> None:
    """Record a finishing quiet stretch at its end: its steps but the last as quiet steps, then
    the last step's application as `_apply` makes it: the members it finishes free their blocks,
    then the step's row with the running count and KV usage after them.  `first`: steps already
    recorded (the step in flight, applied for real)."""
    sched = rep.scheduler
    m = len(stretch.durations)
    d = stretch.members
    quiet.record(rep, recorder, stretch, states, first, m - 1)
    now = env.now
    finished = sq.quiet_finish(sched, now)
    for req in finished:
        rep.on_finished(req)
        if recorder.on_finish(now, req):
            on_request_done(req.parent_id)
    recorder.on_decode_step(rep.index, stretch.starts[m - 1], stretch.durations[m - 1], d, sched.num_running,
                            rep.num_waiting_seen, states[m - 1], len(finished),
                            rep.kv_state()[0] if finished else None)


def serve_pipeline(env: simpy.Environment, rep: Replica, recorder: Recorder,
                   on_request_done: Callable[[int], None], nxt: NextArrival | None = None,
                   run_ahead: bool = False,
                   done_early: Callable[[int], bool] | None = None) -> Generator[Any, Any, None]:
    """Pipeline parallelism (vLLM's `step_with_batch_queue`): schedule a batch while fewer than
    p are in flight and the scheduler has work; otherwise wait for the oldest batch's output and
    apply it.  Each batch costs the CPU `overhead_s` before it enters stage 0, then passes the
    stages (`sim.pipeline.PipelineClock`).  A request in flight is not scheduled again until its
    output is applied (the scheduler's rule), so with few requests stages idle: the bubbles.
    With `nxt` (the next arrival), rounds in which every lane only decodes are taken at once
    (`sim.quiet.pipeline_stretch`); with `run_ahead` the loop's waits that end before the next
    arrival are not events either: `now` runs ahead of the SimPy clock (as in `serve_replica`,
    up to twice it, so that catching up lands on `now` exactly), and catches up where the
    outside must see the time: a finish it cannot report early, an idle wait, the next arrival."""
    sched = rep.scheduler
    pipe = rep.pipeline
    p = pipe.num_stages
    inflight: deque[tuple[StepBatch, float, float, KVState]] = deque()
    cpu_free_s = 0.0          # the CPU's overhead for the last batch ends here
    quiet_ok = nxt is not None and p > 1 and getattr(sched, "lanes_on", False) and not rep.check_invariants
    ahead = run_ahead and nxt is not None
    now = env.now             # the loop's clock (ahead of env.now while waits are skipped)
    horizon = -1.0
    while True:
        if ahead:
            horizon = nxt.ahead_for_replica(rep.index)  # type: ignore[union-attr]
        if quiet_ok and len(inflight) == p - 1 and sched.ready_lanes:
            h = nxt.for_replica(rep.index)  # type: ignore[union-attr]
            # cheap test first: the second scheduling comes when the oldest batch is out
            st = quiet.pipeline_stretch(rep, now, h, list(inflight), env.now) if inflight[0][2] < h else None
            if st is not None:
                rep.num_unseen_arrivals = 0               # the stretch's schedulings see today's queue
                inflight = deque(st.inflight)
                cpu_free_s = st.cpu_free_s
                yield env.timeout(st.end_s - env.now)     # (pipeline_stretch checked it lands on end_s)
                now = env.now
                running, waiting = sched.num_running, rep.num_waiting_seen
                for d, start, dt, kv in st.rows:
                    recorder.on_decode_step(rep.index, start, dt, d, running, waiting, kv)
                if st.finishing is not None:          # its last application finishes members: for real
                    batch, start, kv_state = st.finishing
                    _apply(env, rep, batch, start, env.now - start, kv_state, recorder, on_request_done)
                continue
        if len(inflight) < p and sched.has_work:
            batch = sched.schedule()
            rep.num_unseen_arrivals = 0
            if batch.admitted:
                recorder.on_admitted(now, batch.admitted)
            if batch.is_empty:
                sched.update_from_output(batch, now)   # everyone schedulable is in flight
                if not inflight:
                    if now > env.now:
                        yield env.timeout(now - env.now)
                    yield rep.wait_for_work(env)
                    now = env.now
                    continue
            else:
                start = now
                kv_state = rep.kv_state()
                cpu_free_s = start + pipe.overhead_s
                done = pipe.launch(cpu_free_s, rep.coster.step_time_s(batch),
                                   batch.num_prefill_tokens + batch.num_decode_tokens)
                inflight.append((batch, start, done, kv_state))
                if len(inflight) < p:      # room for another batch: schedule again once the CPU is free
                    if pipe.overhead_s:
                        t = now + pipe.overhead_s
                        if ahead and t < horizon and t <= 2.0 * env.now:
                            now = t
                        else:
                            if now > env.now:
                                yield env.timeout(now - env.now)
                            yield env.timeout(pipe.overhead_s)
                            now = env.now
                    continue
        if not inflight:
            if now > env.now:
                yield env.timeout(now - env.now)
            yield rep.wait_for_work(env)
            now = env.now
            continue
        batch, start, done, kv_state = inflight.popleft()
        if cpu_free_s > done:
            done = cpu_free_s
        if done > now:
            t = now + (done - now)                   # what the SimPy clock reads after the wait
            if ahead and t < horizon and t <= 2.0 * env.now:
                now = t
            else:
                if now > env.now:
                    yield env.timeout(now - env.now)
                yield env.timeout(done - env.now)
                now = env.now
        notify = _applied(rep, batch, start, now - start, kv_state, recorder, now)
        k = 0
        if now > env.now:                            # ahead: what the outside may learn early
            while k < len(notify) and done_early is not None and done_early(notify[k]):
                k += 1
            if k < len(notify):
                yield env.timeout(now - env.now)
        for row in notify[k:]:
            on_request_done(row)


def _apply(env: simpy.Environment, rep: Replica, batch: StepBatch, start: float, dt: float,
           kv_state: KVState, recorder: Recorder,
           on_request_done: Callable[[int], None]) -> None:
    for row in _applied(rep, batch, start, dt, kv_state, recorder, env.now):
        on_request_done(row)


def _applied(rep: Replica, batch: StepBatch, start: float, dt: float, kv_state: KVState,
             recorder: Recorder, now: float) -> list[int]:
    """Apply a step's output at `now` and record it; the rows whose last request finished, for
    the caller to report done (at `now`: only events follow from that, so after the step's row)."""
    outcome = rep.scheduler.update_from_output(batch, now)
    if rep.handoff is not None:          # a prefill replica: its one token is not the client's
        outcome.first_tokens = []
    recorder.on_tokens(now, dt, outcome)
    done: list[int] = []
    for req in outcome.finished:
        rep.on_finished(req)
        if rep.handoff is not None:
            rep.handoff(req, now)
        elif recorder.on_finish(now, req):
            done.append(req.parent_id)
    recorder.on_step(rep.index, start, dt, batch, len(outcome.finished), rep.scheduler.num_running,
                     rep.num_waiting_seen, kv_state, rep.kv_state()[0] if outcome.finished else None)
    if rep.check_invariants:
        rep.check()
    return done


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
    follow = follow_up_rows(table) if "think_s" in table.extra else None   # multi-turn sessions
    think_s = table.extra["think_s"] if follow is not None else None
    ids = [len(table)]

    def send(row: int) -> None:
        _send(env, table, row, replicas, route, recorder, nxt, ids, admission, on_request_done, pool)

    def on_request_done(row: int) -> None:
        if slots is not None:
            slots.release(slot_tokens[row])
            if nxt.blocked:               # the next request is sent now, once the arrival process resumes:
                nxt.s = env.now           # no replica may plan past it meanwhile (a stretch, a run-ahead)
        remaining[0] -= 1
        if remaining[0] == 0 and not done.triggered:
            done.succeed()
        if follow is not None and follow[row] >= 0:
            follow_up(env, follow[row], float(think_s[follow[row]]), send, nxt)  # type: ignore[index]

    router = getattr(route, "__self__", None)
    if (isinstance(router, Router) and follow is None and admission is None and autoscaler is None
            and prefill is None and slots is None):
        nxt.look_past(router, replicas, table.arrival_s)
    env.process(arrival_process(env, table, replicas, route, recorder, slots, nxt, slot_tokens, admission,
                                on_request_done, pool))
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

    def done_early(row: int) -> bool:
        """Report `row` done ahead of the clock where nobody can tell: an open loop (no slot to
        free, no next turn to send) on one replica (with several, a finish reported ahead
        could make another's earlier one look like the run's last) and not the last request
        (whose finish ends the run)."""
        if slots is not None or follow is not None or len(replicas) > 1 or remaining[0] <= 1:
            return False
        remaining[0] -= 1
        return True

    for rep in replicas:
        if rep.pipeline is not None:
            env.process(serve_pipeline(env, rep, recorder, on_request_done, nxt if quiet_ok else None, run_ahead,
                                       done_early))
            continue
        env.process(serve_replica(env, rep, recorder, on_request_done, nxt if quiet_ok else None, run_ahead,
                                  done_early))
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
