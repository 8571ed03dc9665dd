"""sim.pipe_loop: the batch queue's loop driven by hand, without SimPy: what it asks the engine to
wait for, and when, against hand-worked pipeline timing (the engine-level equivalences, stretches
and run-ahead against step by step, are in tests/test_pipeline.py)."""

from __future__ import annotations

import pytest

from sim.cost_model import StepCoster, constant_profile
from sim.horizon import NextArrival
from sim.kv_cache_manager import KVCacheManager
from sim.metrics import Recorder
from sim.pipe_loop import CATCH_UP, IDLE, WAIT, PipeLoop
from sim.pipeline import PipelineClock
from sim.replica import Replica
from sim.request import Request
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1


def replica(stages: int, stage_s: float, overhead_s: float = 0.0) -> Replica:
    lim = SchedulerLimits(max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=4096,
                          pipeline_parallel_size=stages)
    sched = SchedulerV1(lim, KVCacheManager(1000, 16, False, 4096), pp_lanes=True)
    rep = Replica(0, sched, StepCoster(constant_profile(stage_s), 16, "auto", 1), False)
    rep.pipeline = PipelineClock((1.0,) * stages, 0.0, overhead_s)
    return rep


def next_arrival(s: float) -> NextArrival:
    """The next arrival at `s`."""
    nxt = NextArrival()
    nxt.s = s
    return nxt


def one_request(sent_s: float) -> tuple[Replica, Recorder]:
    """2 stages of 10 ms holding one request (32 prompt tokens, 3 output tokens) sent at `sent_s`."""
    rep = replica(2, 0.01)
    rec = Recorder(1)
    rec.on_send(0, sent_s, 32, 1)
    rep.add_request(Request(0, sent_s, 32, 3, ()))
    return rep, rec


def test_on_the_clock_every_wait_is_the_engines():
    # p = 2 stages of 10 ms, one request of 32 prompt tokens and 3 output tokens, nothing run
    # ahead: the loop waits a full traversal (20 ms) for each token's batch, the last one
    # finishes the request (reported at once: the loop is on the clock), then it is idle
    rep, rec = one_request(0.0)
    done: list[int] = []
    loop = PipeLoop(rep, rec, done.append, NextArrival(), False, False, None, None, 0.0)
    clock = 0.0
    waits = []
    while True:
        what = loop.advance(clock)
        if what == IDLE:
            break
        assert what == WAIT
        waits.append(loop.delay_s)
        clock = loop.now = clock + loop.delay_s
    assert waits == pytest.approx([0.02, 0.02, 0.02])
    assert rec.first_token_s[0] == pytest.approx(0.02)
    assert rec.finish_s[0] == pytest.approx(0.06)
    assert done == [0]
    assert rec.num_steps == 3


def test_ahead_of_the_clock_waits_pass_without_the_engine():
    # the same request with the next arrival far away and the SimPy clock at 1 s: every wait
    # ends before twice the clock and the arrival, so the loop takes them itself; the finish at
    # 1.06 s is not one `report_early` may tell early, so it asks to catch up first, and
    # reports the row only when called again (on the clock), then goes idle
    rep, rec = one_request(1.0)
    done: list[int] = []
    loop = PipeLoop(rep, rec, done.append, next_arrival(100.0), False, True, lambda rows: rows, None, 1.0)
    assert loop.advance(1.0) == CATCH_UP
    assert loop.now == pytest.approx(1.06)
    assert done == []                          # not before the clock has caught up
    assert rec.finish_s[0] == pytest.approx(1.06)
    assert loop.advance(loop.now) == IDLE
    assert done == [0]


def test_a_finish_told_early_needs_no_catch_up():
    # `report_early` takes the row (an open loop on one replica): no catch-up, straight to idle
    rep, rec = one_request(1.0)
    done: list[int] = []
    told: list[int] = []

    def early(rows: list[int]) -> list[int]:
        told.extend(rows)
        return []
    loop = PipeLoop(rep, rec, done.append, next_arrival(100.0), False, True, early, None, 1.0)
    assert loop.advance(1.0) == IDLE
    assert told == [0] and done == []
    assert loop.now == pytest.approx(1.06)


def test_cpu_overhead_is_a_wait_between_two_batches():
    # 2 stages of 10 ms, 2 ms of CPU per batch, on the clock: the first request's batch is
    # launched at 0 and enters stage 0 at 2 ms; with room for another batch the loop waits the
    # 2 ms overhead, meanwhile a second request arrives; its batch is scheduled at 2 ms, and the
    # queue full, the loop waits for the first batch's output: 2 + 2 x 10 = 22 ms
    rep = replica(2, 0.01, overhead_s=0.002)
    rec = Recorder(2)
    rec.on_send(0, 0.0, 16, 1)
    rep.add_request(Request(0, 0.0, 16, 2, ()))
    loop = PipeLoop(rep, rec, lambda row: None, NextArrival(), False, False, None, None, 0.0)
    assert loop.advance(0.0) == WAIT and loop.delay_s == pytest.approx(0.002)
    loop.now = 0.002
    rec.on_send(1, 0.002, 16, 1)
    rep.add_request(Request(1, 0.002, 16, 2, ()))
    assert loop.advance(0.002) == WAIT and loop.delay_s == pytest.approx(0.02)
    # the first batch popped to wait for (its output at 22 ms), the second still in flight: in
    # stage 0 once the first leaves it (12 ms) and out at 32 ms
    assert [(b[1], b[2]) for b in loop.inflight] == [pytest.approx((0.002, 0.032))]
    assert rec.first_scheduled_s[1] == pytest.approx(0.002)
    loop.now = 0.022
    loop.advance(0.022)
    assert rec.first_token_s[0] == pytest.approx(0.022)
