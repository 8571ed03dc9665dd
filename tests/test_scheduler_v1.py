"""Walkthroughs of the vllm-v1 scheduler against hand-worked vLLM 0.32 behaviour:
exact block ids, queue order, preemption victims, chunking and prefix hits."""

from __future__ import annotations

from conftest import make_request, make_scheduler

from sim.decode_set import sync
from sim.request import Status


def step(s):
    batch = s.schedule()
    out = s.update_from_output(batch)
    sync(s)
    return batch, out


def test_three_requests_run_to_completion_with_exact_blocks():
    s = make_scheduler(num_blocks=10, block_size=16)
    a, b, c = (make_request(20, 3, req_id=i) for i in range(3))
    for r in (a, b, c):
        s.add_request(r)
    batch, out = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 20), (1, 20), (2, 20)]
    assert (a.block_ids, b.block_ids, c.block_ids) == ([1, 2], [3, 4], [5, 6])
    assert out.first_tokens == [a, b, c]
    batch, _ = step(s)
    assert [n for _, n in batch.scheduled] == [1, 1, 1] and batch.num_decode_tokens == 3
    batch, out = step(s)
    assert out.finished == [a, b, c]
    # each request frees tail first to the front of the queue (unhashed blocks: LIFO reuse)
    assert s.kv.pool.free_queue() == [6, 5, 4, 3, 2, 1, 7, 8, 9]
    assert not s.has_work


def test_preemption_takes_the_last_running_request_and_it_resumes_first():
    s = make_scheduler(num_blocks=5, block_size=16)        # 4 usable blocks
    a, b = make_request(30, 10, req_id=0), make_request(30, 10, req_id=1)
    s.add_request(a)
    s.add_request(b)
    for _ in range(3):
        batch, _ = step(s)
        assert not batch.preempted
    assert a.num_output == 3 and a.block_ids == [1, 2] and b.block_ids == [3, 4]
    batch, _ = step(s)                                      # a needs a 3rd block: b is the victim
    assert batch.preempted == [b]
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1)]
    assert a.block_ids == [1, 2, 4]                         # b's tail block came back first
    assert b.status is Status.PREEMPTED and b.num_computed == 0 and b.num_output == 3
    assert list(s.waiting) == [b] and s.num_preemptions == 1
    while a.status is not Status.FINISHED:
        batch, _ = step(s)
        assert [r.req_id for r, _ in batch.scheduled] == [0]   # b's 33 tokens need 3 blocks: only 1 free
    batch, _ = step(s)                                      # b resumes: recompute prompt + 3 outputs
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 33)]
    assert b.block_ids == [4, 2, 1]
    assert b.num_preemptions == 1


def test_chunked_prefill_shares_the_token_budget_in_running_order():
    s = make_scheduler(num_blocks=40, block_size=16, max_num_batched_tokens=64)
    a, b = make_request(100, 2, req_id=0), make_request(10, 2, req_id=1)
    s.add_request(a)
    s.add_request(b)
    batch, out = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 64)] and not out.sampled
    batch, out = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 36), (1, 10)]
    assert out.first_tokens == [a, b]


def test_without_chunked_prefill_a_prompt_larger_than_the_budget_left_waits():
    s = make_scheduler(num_blocks=40, block_size=16, max_num_batched_tokens=128, chunked=False)
    a, b = make_request(100, 2, req_id=0), make_request(100, 2, req_id=1)
    s.add_request(a)
    s.add_request(b)
    batch, _ = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 100)]
    batch, _ = step(s)                                       # a decodes (1 token), b (100) > 127? no: fits
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1), (1, 100)]


def test_max_num_seqs_limits_admission():
    s = make_scheduler(num_blocks=40, block_size=16, max_num_seqs=2)
    reqs = [make_request(10, 5, req_id=i) for i in range(3)]
    for r in reqs:
        s.add_request(r)
    batch, _ = step(s)
    assert [r.req_id for r, _ in batch.scheduled] == [0, 1] and list(s.waiting) == [reqs[2]]


def test_prefix_hit_within_the_same_step_and_ref_counts():
    s = make_scheduler(num_blocks=20, block_size=16, caching=True)
    a = make_request(40, 2, req_id=0, segments=[(7, 32)])
    b = make_request(40, 2, req_id=1, segments=[(7, 32)])
    s.add_request(a)
    s.add_request(b)
    batch, _ = step(s)
    # a's full blocks are cached when scheduled, so b (admitted after it) hits both of them
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 40), (1, 8)]
    assert a.block_ids == [1, 2, 3] and b.block_ids == [1, 2, 4]
    assert s.kv.pool.ref[1] == 2 and b.prefix_hit_tokens == 32
    s.kv.check_invariants(s.running, s.waiting)


def test_full_prompt_hit_still_recomputes_the_last_block():
    s = make_scheduler(num_blocks=20, block_size=16, caching=True)
    a = make_request(32, 1, req_id=0, segments=[(9, 32)])
    s.add_request(a)
    step(s)                                                  # a finishes (1 output token)
    b = make_request(32, 1, req_id=1, segments=[(9, 32)])
    s.add_request(b)
    batch, _ = step(s)
    # hit capped at num_tokens - 1 = 31 tokens -> only 1 full block; 16 tokens recomputed
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 16)] and b.prefix_hit_tokens == 16


def test_async_scheduling_keeps_decoding_without_an_extra_step():
    s = make_scheduler(num_blocks=10, block_size=16, async_scheduling=True)
    a = make_request(20, 3, req_id=0)
    s.add_request(a)
    b1 = s.schedule()
    b2 = s.schedule()                                        # scheduled before step 1's output
    assert [n for _, n in b2.scheduled] == [1]
    s.update_from_output(b1)
    b3 = s.schedule()
    s.update_from_output(b2)
    b4 = s.schedule()                                        # a's last token is in flight: skipped
    assert not b4.scheduled and [n for _, n in b3.scheduled] == [1]
    out = s.update_from_output(b3)
    assert out.finished == [a] and a.num_output == 3
    s.update_from_output(b4)
