"""Engine-level checks against independent truths: queueing theory (M/D/1), hand-worked
step timing, async vs sync ordering, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_scheduler

from sim.cost_model import StepCoster, constant_profile
from sim.engine import simulate
from sim.metrics import Recorder
from sim.replica import Replica
from sim.requests_table import RequestTable
from sim.router import Router


def run_table(table: RequestTable, step_s: float, *, num_blocks: int = 4000, async_scheduling: bool = False, **kw):
    sched = make_scheduler(num_blocks, async_scheduling=async_scheduling, **kw)
    rep = Replica(0, sched, StepCoster(constant_profile(step_s), 16, "auto", 1), async_scheduling)
    rec = Recorder(len(table))
    end = simulate(table, [rep], Router("round-robin", 1, 16, 1 << 20).route, rec)
    return rec, end


def poisson_table(rng, n: int, rate: float, prompt: int, output: int) -> RequestTable:
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    return RequestTable(t, np.full(n, prompt), np.full(n, output))


def test_md1_mean_wait_matches_pollaczek_khinchine(rng):
    # one sequence at a time, fixed lengths, constant step: service D = output * step
    step_s, output, rate = 0.01, 10, 6.0
    d = output * step_s
    rho = rate * d
    table = poisson_table(rng, 40_000, rate, prompt=32, output=output)
    rec, _ = run_table(table, step_s, max_num_seqs=1)
    wait = rec.first_scheduled_s - rec.send_s
    expected = rate * d * d / (2 * (1 - rho))          # P-K: Wq = lambda E[S^2] / (2 (1 - rho))
    assert wait.mean() == pytest.approx(expected, rel=0.06)
    # and every request's service took exactly D
    assert np.allclose(rec.finish_s - rec.first_scheduled_s, d)


def test_step_timing_of_a_single_request_is_hand_worked():
    table = RequestTable(np.array([1.0]), np.array([100]), np.array([5]))
    rec, end = run_table(table, 0.02)
    assert rec.first_token_s[0] == pytest.approx(1.02)     # prefill step
    assert rec.finish_s[0] == pytest.approx(1.10)          # + 4 decode steps
    assert end == pytest.approx(1.10)
    vals, w = rec.itl_samples()
    assert w.sum() == 4 and np.allclose(vals, 0.02)


def test_async_scheduling_sees_arrivals_one_step_later():
    # b arrives during a's first step: sync runs its prefill in step 2, async in step 3
    # (step 3 is scheduled at the start of step 2, which is when vLLM stamps SCHEDULED)
    table = RequestTable(np.array([0.0, 0.005]), np.array([64, 64]), np.array([4, 4]))
    rec_sync, _ = run_table(table, 0.01)
    rec_async, _ = run_table(table, 0.01, async_scheduling=True)
    assert rec_sync.first_token_s[1] == pytest.approx(0.02)
    assert rec_async.first_token_s[1] == pytest.approx(0.03)
    assert rec_async.first_scheduled_s[1] == pytest.approx(0.01)
    # a alone: same token times in both modes
    assert rec_sync.finish_s[0] == pytest.approx(rec_async.finish_s[0])


def test_closed_loop_keeps_at_most_max_concurrency_in_flight(rng):
    n = 50
    table = RequestTable(np.zeros(n), np.full(n, 16), np.full(n, 8), max_concurrency=4)
    rec, _ = run_table(table, 0.01)
    events = sorted([(t, 1) for t in rec.send_s] + [(t, -1) for t in rec.finish_s], key=lambda e: (e[0], e[1]))
    inflight = np.cumsum([e[1] for e in events])
    assert inflight.max() == 4


def test_same_seed_same_numbers(rng):
    table = poisson_table(np.random.default_rng(3), 500, 20.0, 200, 50)
    a, _ = run_table(table, 0.015, max_num_seqs=8, num_blocks=60)
    b, _ = run_table(table, 0.015, max_num_seqs=8, num_blocks=60)
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.preemptions, b.preemptions)
    assert a.preemptions.sum() > 0



def test_step_waiting_count_leaves_out_arrivals_during_the_step():
    # vLLM adds a request to its scheduler only between steps, so the statistics of the step during
    # which it arrives (made in update_from_output) do not count it as waiting.  a at 0 s, b during
    # step 0; c and d during step 4 (the end of a decode stretch), admitted as a and b finish.
    table = RequestTable(np.array([0.0, 0.005, 0.0452, 0.0453]), np.full(4, 64), np.full(4, 8))
    sched = make_scheduler(4000, max_num_seqs=2)
    rep = Replica(0, sched, StepCoster(constant_profile(0.01), 16, "auto", 1), False)
    rec = Recorder(len(table), record_steps=True)
    simulate(table, [rep], Router("round-robin", 1, 16, 1 << 20).route, rec)
    assert list(rec.steps.num_waiting)[:11] == [0, 0, 0, 0, 0, 2, 2, 2, 1, 0, 0]



def _follow_up_order(usable: bool, seed: int) -> list[tuple[float, str]]:
    """Session turns added by a driver at random moments (ties on purpose: think times of 0 and
    of whole milliseconds, several turns at one instant) among other processes' timeouts at the
    same instants; what happens in which order."""
    import random
    from array import array

    import simpy

    from sim.follow_ups import FollowUps
    from sim.horizon import NextArrival

    env = simpy.Environment()
    seen: list[tuple[float, str]] = []
    nxt = NextArrival()
    fu = FollowUps(env, lambda row: seen.append((env.now, f"turn {row}")), nxt, array("q"), array("d"))
    fu.usable = usable
    rng = random.Random(seed)

    def driver():
        row = 0
        for _ in range(200):
            for _ in range(rng.choice((1, 1, 2, 3))):
                fu.add(row, rng.choice((0.0, 0.001, 0.002, rng.random() / 100)))
                row += 1
            yield env.timeout(rng.choice((0.0, 0.001, 0.0005)))

    def other(k: int):
        while True:
            yield env.timeout(0.001)
            seen.append((env.now, f"other {k}"))

    env.process(driver())
    env.process(other(0))
    env.process(other(1))
    env.run(until=0.3)
    assert nxt.later_s == (min(fu.pending)[0] if fu.pending else float("inf"))
    if usable:      # one event in SimPy's queue per entry marked armed, the earliest among them
        from sim.follow_ups import Armed
        events = sorted(e[2] for e in env._queue if isinstance(e[3], Armed))
        assert events == sorted(e[1] for e in fu.pending if e[3])
        assert not fu.pending or fu.pending[0][3]
    return seen


def test_follow_ups_arm_events_as_simpy_schedules_timeouts() -> None:
    """The armed event goes into SimPy's queue with a timeout's priority, and a finished row
    hands its next turn (by the follow links) its think time, nothing for a row without one."""
    from array import array

    import simpy
    from simpy.events import NORMAL

    from sim import follow_ups
    from sim.horizon import NextArrival

    assert follow_ups.NORMAL == NORMAL
    env = simpy.Environment()
    sent: list[tuple[float, int]] = []
    nxt = NextArrival()
    fu = follow_ups.FollowUps(env, lambda row: sent.append((env.now, row)), nxt, array("q", [2, -1, -1]),
                              array("d", [1.5, 0.0, 0.0]))
    fu.done(1)
    assert not fu.pending and nxt.later_s == float("inf")
    fu.done(0)
    assert nxt.later_s == 1.5
    env.run()
    assert sent == [(1.5, 2)] and nxt.later_s == float("inf")


def test_follow_ups_keep_simpys_order_of_a_timeout_per_turn() -> None:
    """`FollowUps` keeps only the earliest pending turn in SimPy's queue; every turn must still be
    sent at its time and in the order a timeout per turn (the plain path) gives, ties included."""
    for seed in range(5):
        plain = _follow_up_order(False, seed)
        assert sum(1 for _, what in plain if what.startswith("turn")) > 300
        assert _follow_up_order(True, seed) == plain
