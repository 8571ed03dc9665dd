"""sim.run_ahead.Inbox: which arrivals a loop running ahead of the clock sends itself, when,
and how it leaves the shared cursor (NextArrival) for the arrival process."""

from __future__ import annotations

import math
from types import SimpleNamespace

from sim.horizon import NextArrival
from sim.run_ahead import Inbox


def _inbox(times):
    sent: list[tuple[int, float]] = []
    nxt = NextArrival()
    nxt.s = times[0]
    return Inbox(list(times), nxt, lambda row, t: sent.append((row, t))), nxt, sent


def test_arrivals_strictly_inside_a_step_are_sent_at_their_times():
    box, nxt, sent = _inbox([1.0, 2.0, 2.0, 3.5, 5.0])
    assert box.take_inside(0.5, 3.0)                   # rows 0-2 lie in (0.5, 3.0)
    assert sent == [(0, 1.0), (1, 2.0), (2, 2.0)]
    assert (nxt.row, nxt.s) == (3, 3.5)                # the cursor: the next row not sent, its time
    assert box.take_inside(3.0, 3.4) and len(sent) == 3   # none inside: nothing to send, may go on


def test_an_arrival_on_the_step_boundary_is_left_to_the_clock():
    box, nxt, sent = _inbox([1.0, 2.0, 3.0])
    assert not box.take_inside(0.5, 2.0)               # lands on the application: SimPy orders it
    assert sent == [] and nxt.row == 0                 # ... and nothing before it is sent either
    assert not box.take_inside(1.0, 1.5)               # lands on the scheduling
    assert box.take_inside(0.5, 1.5) and sent == [(0, 1.0)]
    assert not box.take_inside(1.5, 3.0) and sent == [(0, 1.0)]   # row 1 inside, row 2 on the end


def test_an_idle_loop_wakes_on_the_next_arrival_with_its_instant():
    box, nxt, sent = _inbox([1.0, 1.0, 1.0, 4.0])
    idle = SimpleNamespace(scheduler=SimpleNamespace(loading=[]))
    loading = SimpleNamespace(scheduler=SimpleNamespace(loading=[(0.5, 0, None)]))
    assert box.wake(loading, 10.0) is None and sent == []     # a KV load may wake it first: wait for real
    assert box.wake(idle, 10.0) == 1.0
    assert sent == [(0, 1.0), (1, 1.0), (2, 1.0)] and (nxt.row, nxt.s) == (3, 4.0)
    assert box.wake(idle, 1.9) is None and len(sent) == 3      # 4.0 is past twice the clock: wait for real
    assert box.wake(idle, 2.0) == 4.0 and sent[-1] == (3, 4.0)
    assert nxt.row == 4 and math.isinf(nxt.s) and box.wake(idle, 10.0) is None
    assert box.take_inside(9.0, 10.0)                  # past the last row: always free to go on
