"""sim.scheduler_running: a running request's demand and vLLM's preemption of the last running
request, by hand (the full steps against a literal port of vLLM are in test_scheduler_v1 and
test_scheduler_v1_oracle)."""

from __future__ import annotations

from conftest import make_request, make_scheduler

from sim.batch import StepBatch
from sim.request import Status
from sim.scheduler_running import demand, preempt_last


def test_demand_is_the_rest_of_the_sequence_cut_by_threshold_and_max_model_len():
    s = make_scheduler(num_blocks=100, max_model_len=1000)
    r = make_request(300, 50)
    assert demand(s, r, 0) == 300            # nothing computed: the whole prompt
    assert demand(s, r, 128) == 128          # the long-prefill threshold
    r.num_computed = 300
    r.num_output = 1
    assert demand(s, r, 128) == 1            # decoding: one token
    r.num_prompt_tokens = 995                # 995 + 5 tokens - 995 computed = 5, but at most
    r.num_output = 5                         # max_model_len - 1 computed: 999 - 995 = 4
    r.num_computed = 995
    assert demand(s, r, 0) == 4


def test_preempt_last_frees_the_newest_and_puts_it_first_in_line():
    # two requests of 40 tokens (3 blocks of 16 each) admitted in one step; preempting takes the
    # one admitted last: its 3 blocks back, computed 0, at the front of the waiting queue
    s = make_scheduler(num_blocks=20, block_size=16)
    a, b, c = make_request(40, 5), make_request(40, 5), make_request(40, 5)
    for r in (a, b):
        s.add_request(r)
    s.update_from_output(s.schedule())
    s.add_request(c)
    free = s.kv.pool.nfree
    batch = StepBatch()
    assert preempt_last(s, batch) is b
    assert s.kv.pool.nfree == free + 3
    assert (b.status, b.num_computed, b.num_preemptions) == (Status.PREEMPTED, 0, 1)
    assert list(s.waiting) == [b, c]
    assert batch.preempted == [b]
    assert s.num_running == 1 and s.num_preemptions == 1
