"""The arrival horizon of each replica (sim/horizon.py), worked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sim.horizon import NextArrival
from sim.router import Router

ARRIVALS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])


def _at(nxt: NextArrival, row: int) -> None:
    nxt.row, nxt.s = row, float(ARRIVALS[row])


def test_without_look_past_every_replica_stops_at_the_next_arrival() -> None:
    nxt = NextArrival()
    assert nxt.for_replica(0) == float("inf")
    _at(nxt, 2)
    assert [nxt.for_replica(i) for i in range(3)] == [3.0, 3.0, 3.0]


def test_round_robin_knows_which_arrival_each_replica_gets() -> None:
    router = Router("round-robin", 3, 16, 1 << 10)
    reps = [SimpleNamespace(outstanding_tokens=0) for _ in range(3)]
    nxt = NextArrival()
    nxt.look_past(router, reps, ARRIVALS)  # type: ignore[arg-type]
    router.next_rr = 4                    # four requests routed: the next (row 1) goes to replica 1
    _at(nxt, 1)
    assert [nxt.for_replica(i) for i in range(3)] == [4.0, 2.0, 3.0]
    _at(nxt, 5)                            # rows past the table: none comes
    router.next_rr = 8
    assert nxt.for_replica(2) == 6.0 and nxt.for_replica(0) == float("inf")


def test_least_outstanding_tokens_skips_the_arrivals_others_are_sure_to_win() -> None:
    router = Router("least-outstanding-tokens", 3, 16, 1 << 10)
    reps = [SimpleNamespace(outstanding_tokens=t) for t in (500, 100, 500)]
    nxt = NextArrival()
    nxt.look_past(router, reps, ARRIVALS)  # type: ignore[arg-type]
    _at(nxt, 0)
    # replica 1 is least loaded: the next arrival may be its own; replica 0 is beaten by one
    # (replica 1), replica 2 by two (replica 1, and replica 0 on the index tie-break)
    assert [nxt.for_replica(i) for i in range(3)] == [2.0, 1.0, 3.0]


def test_decided_follow_ups_and_single_replicas_use_the_next_arrival() -> None:
    router = Router("round-robin", 1, 16, 1 << 10)
    nxt = NextArrival()
    nxt.look_past(router, [SimpleNamespace(outstanding_tokens=0)], ARRIVALS)  # type: ignore[list-item]
    assert nxt.rr is None                  # one replica: nothing to look past
    _at(nxt, 3)
    nxt.later_s = 2.5
    assert nxt.for_replica(0) == 2.5


def test_steps_ahead_of_the_clock_look_past_only_under_round_robin() -> None:
    # a step taken ahead may finish a request, lowering the count least outstanding tokens reads
    # at an arrival routed meanwhile: those stop at the next arrival anywhere
    reps = [SimpleNamespace(outstanding_tokens=t) for t in (500, 100, 500)]
    lot = NextArrival()
    lot.look_past(Router("least-outstanding-tokens", 3, 16, 1 << 10), reps, ARRIVALS)  # type: ignore[arg-type]
    _at(lot, 0)
    assert [lot.ahead_for_replica(i) for i in range(3)] == [1.0, 1.0, 1.0]
    lot.later_s = 0.5
    assert lot.ahead_for_replica(2) == 0.5
    router = Router("round-robin", 3, 16, 1 << 10)
    rr = NextArrival()
    rr.look_past(router, reps, ARRIVALS)  # type: ignore[arg-type]
    router.next_rr = 4
    _at(rr, 1)
    assert [rr.ahead_for_replica(i) for i in range(3)] == [rr.for_replica(i) for i in range(3)] == [4.0, 2.0, 3.0]
