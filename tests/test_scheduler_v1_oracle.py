"""The fast v1 scheduler (decode set + calendars) makes exactly the decisions of the literal
running-list loop, step by step, on random small scenarios: scheduled tokens per request, preemption
victims, finished requests, block tables and free-queue order."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from reference_scheduler import LiteralSchedulerV1

from sim.decode_set import sync
from sim.kv_cache_manager import KVCacheManager
from sim.request import Request
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1


def build(kind, lim, num_blocks, bs, caching):
    kv = KVCacheManager(num_blocks, bs, caching, lim.max_model_len)
    return SchedulerV1(lim, kv, record_schedule=True) if kind == "fast" else LiteralSchedulerV1(lim, kv)


def drive(sched, specs, async_, max_steps=3000):
    """Run to completion on a step clock; return one comparable record per step."""
    reqs = [Request(i, 0.0, p, o, segs, content_key=i, parent_id=i) for i, (p, o, segs, _) in enumerate(specs)]
    arrivals = sorted(range(len(specs)), key=lambda i: (specs[i][3], i))
    trace = []
    pending = None
    k = 0
    nxt = 0
    while k < max_steps:
        while nxt < len(arrivals) and specs[arrivals[nxt]][3] <= k:
            sched.add_request(reqs[arrivals[nxt]])
            nxt += 1
        batch = sched.schedule()
        if async_:
            out = sched.update_from_output(pending) if pending is not None else None
            pending = batch
        else:
            out = sched.update_from_output(batch)
        if isinstance(sched, SchedulerV1):     # decode-set members' counters are implicit
            sync(sched)
        trace.append((
            [(r.req_id, n) for r, n in batch.scheduled],
            [r.req_id for r in batch.preempted],
            sorted(r.req_id for r in out.finished) if out else [],
            sched.kv.pool.free_queue(),
            [(r.req_id, r.block_ids) for r in sched.running],
        ))
        k += 1
        if nxt == len(arrivals) and not sched.has_work and (pending is None or not async_):
            break
        if async_ and nxt == len(arrivals) and not sched.has_work and pending is not None:
            sched.update_from_output(pending)
            pending = None
            break
    return trace, [(r.num_output, r.num_preemptions) for r in reqs]


@st.composite
def scenarios(draw):
    bs = draw(st.sampled_from([4, 8, 16]))
    n = draw(st.integers(1, 10))
    caching = draw(st.booleans())
    specs = []
    for _ in range(n):
        p = draw(st.integers(1, 90))
        o = draw(st.integers(1, 25))
        segs = ()
        if caching and draw(st.booleans()):
            share = draw(st.integers(1, p))
            segs = ((draw(st.integers(1, 3)), share),)
        specs.append((p, o, segs, draw(st.integers(0, 20))))
    longest = max(p + o for p, o, _, _ in specs)
    num_blocks = draw(st.integers(-(-longest // bs) + 2, 40))
    chunked = draw(st.booleans())
    max_len = 128
    budget = draw(st.integers(16, 200)) if chunked else draw(st.integers(max_len, 300))
    lim = SchedulerLimits(max_num_seqs=draw(st.integers(1, 8)), max_num_batched_tokens=budget, max_model_len=max_len,
                          enable_chunked_prefill=chunked, long_prefill_token_threshold=draw(st.sampled_from([0, 0, 8, 32])),
                          async_scheduling=draw(st.booleans()))
    return lim, specs, num_blocks, bs, caching


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_fast_scheduler_matches_literal_loop(sc):
    lim, specs, num_blocks, bs, caching = sc
    fast = drive(build("fast", lim, num_blocks, bs, caching), specs, lim.async_scheduling)
    ref = drive(build("ref", lim, num_blocks, bs, caching), specs, lim.async_scheduling)
    for k, (a, b) in enumerate(zip(fast[0], ref[0], strict=False)):
        assert a == b, f"step {k}: fast {a} != literal {b}"
    assert len(fast[0]) == len(ref[0])
    assert fast[1] == ref[1]
