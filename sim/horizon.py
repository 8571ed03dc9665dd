"""When the next request reaches a replica: the horizon a quiet stretch (`sim.quiet`) must stop
before.  Plain state, read by the engine's replica processes and written by its arrival process
(`sim.engine`), which sets `s` and `row` before each arrival, and by the sessions' follow-ups
(`sim.follow_ups.FollowUps`), which keep `later_s` at the earliest next turn decided.
Compiled with mypyc (`setup_native.py`): the PP batch-queue loop (`sim.pipe_loop`) asks it for
the horizon at every batch."""

from __future__ import annotations

from typing import Any

from sim.replica import Replica
from sim.router import Router


class NextArrival:
    """When the next request reaches a replica (inf: none known); quiet stretches stop before it.

    When nothing but the router decides where a request goes (no admission control, autoscaler,
    P/D pool or closed loop), `for_replica` can look past arrivals that cannot land on a replica,
    so its quiet stretch runs on through them (exact: the router reads nothing a stretch changes):

    * round robin: the replica each future arrival lands on is known in advance;
    * least outstanding tokens: a replica whose (outstanding tokens, index) is beaten by c others'
      cannot get any of the next c arrivals — the others' counts only fall (finishes) unless an
      arrival lands on them, each arrival raises only one of them, and its own count stays put (a
      stretch has no finishes) — so its horizon is the (c+1)-th arrival from now.

    Otherwise every replica stops at the next arrival anywhere.  Session follow-ups (`later_s`: the
    earliest send time already decided, inf: none) count as arrivals too."""

    __slots__ = ("s", "count", "row", "rr", "lot", "arrival", "n", "later_s", "blocked")

    def __init__(self) -> None:
        self.s = float("inf")
        self.count = 0            # requests arrived so far (the autoscaler's request-rate metric)
        self.row = 0              # table row of the next arrival
        self.rr: Any = None       # the Router under round robin (read generically: an interpreted class)
        self.lot: list[Any] | None = None   # the replicas under least outstanding tokens
        self.arrival: Any = None
        self.n = 1
        self.later_s = float("inf")   # the earliest session follow-up decided (inf: none)
        self.blocked = False      # closed loop: the next arrival waits for a request to finish

    def for_replica(self, i: int) -> float:
        if self.later_s != float("inf"):
            return min(self.s, self.later_s)
        if self.s == float("inf"):
            return self.s
        rr = self.rr
        if rr is not None:
            j = self.row + (i - rr.next_rr) % self.n
            return float(self.arrival[j]) if j < self.arrival.shape[0] else float("inf")
        lot = self.lot
        if lot is not None:
            mine = (lot[i].outstanding_tokens, i)
            beaten_by = sum(1 for k, r in enumerate(lot) if k != i and (r.outstanding_tokens, k) < mine)
            if beaten_by:
                j = self.row + beaten_by
                return float(self.arrival[j]) if j < self.arrival.shape[0] else float("inf")
        return self.s

    def ahead_for_replica(self, i: int) -> float:
        """`for_replica` for steps taken ahead of the clock (`sim.engine` run-ahead), which may
        finish requests: under least outstanding tokens a finish lowers this replica's count
        before an arrival routed elsewhere meanwhile would read it, so those stop at the next
        arrival anywhere.  (Round robin reads no replica state.)"""
        if self.lot is not None:
            return min(self.s, self.later_s)
        return self.for_replica(i)

    def look_past(self, router: Router, replicas: list[Replica], arrival_s: Any) -> None:
        """Only `router` decides where requests go (the caller has checked there is no admission
        control, autoscaler, P/D pool, closed loop or session): with several replicas and a
        routing policy that allows it, let each replica look past the arrivals it cannot get."""
        if router.ready is not None or len(replicas) < 2:
            return
        self.arrival, self.n = arrival_s, len(replicas)
        if router.policy == "round-robin":
            self.rr = router
        elif router.policy == "least-outstanding-tokens":
            self.lot = replicas
