"""Walkthroughs of the vllm-v0 scheduler against hand-worked vLLM 0.8.5 V0 behaviour: exact
block ids, queue order, prefill-only steps, preemption victims, swap out / swap in, the
watermark, copy-on-write for n = 2; and the whole engine on a swapping scenario."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, make_request

from sim.block_manager_v0 import BlockManagerV0
from sim.errors import ScenarioError, SimulationError
from sim.request import Request, Status
from sim.scheduler_v0 import SchedulerV0
from sim.scheduler_v1 import SchedulerLimits


def make_v0(num_gpu_blocks: int, block_size: int = 4, *, num_cpu_blocks: int = 16, watermark: float = 0.0,
            chunked: bool = False, max_num_batched_tokens: int = 2048, max_num_seqs: int = 256,
            mode: str | None = None) -> SchedulerV0:
    lim = SchedulerLimits(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          max_model_len=1024, enable_chunked_prefill=chunked)
    return SchedulerV0(lim, BlockManagerV0(num_gpu_blocks, num_cpu_blocks, block_size, watermark), mode)


def step(s: SchedulerV0):
    batch = s.schedule()
    out = s.update_from_output(batch)
    s.kv.check_invariants(s.running)
    return batch, out


def ids(s: SchedulerV0, r: Request) -> list[int]:
    return s.kv.block_ids(r)


def fork_pair(prompt: int, output: int, row: int) -> list[Request]:
    """Parallel sampling n = 2, as the engine's arrival process creates it."""
    return [Request(row * 10 + k, 0.0, prompt, output, content_key=row, parent_id=row) for k in range(2)]


def test_prefill_step_then_decodes_with_exact_blocks_and_lifo_free():
    s = make_v0(10)
    a, b, c = (make_request(6, 3, req_id=i) for i in range(3))
    for r in (a, b, c):
        s.add_request(r)
    batch, out = step(s)
    assert (batch.num_prefill_seqs, batch.num_prefill_tokens, batch.num_decode_tokens) == (3, 18, 0)
    assert (ids(s, a), ids(s, b), ids(s, c)) == ([0, 1], [2, 3], [4, 5])
    assert out.first_tokens == [a, b, c]
    batch, _ = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1), (1, 1), (2, 1)]
    batch, out = step(s)
    assert out.finished == [a, b, c] and not s.has_work
    # each table is freed head first onto the left of the deque: the last freed block is reused first
    assert list(s.kv.gpu.free_ids) == [5, 4, 3, 2, 1, 0, 6, 7, 8, 9]


def test_a_step_that_admits_a_prompt_runs_no_decodes():
    s = make_v0(20)
    a = make_request(6, 5, req_id=0)
    s.add_request(a)
    step(s)
    step(s)
    b = make_request(5, 5, req_id=1)
    s.add_request(b)
    batch, out = step(s)                       # prefill-only: a waits
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 5)] and batch.num_decode_tokens == 0
    assert out.sampled == [b] and a.num_output == 2
    batch, _ = step(s)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1), (1, 1)]


def test_recompute_preempts_the_last_running_group_and_it_goes_to_the_front_of_waiting():
    s = make_v0(4)                              # 16 token slots
    a, b = make_request(8, 3, req_id=0), make_request(8, 3, req_id=1)
    s.add_request(a)
    s.add_request(b)
    step(s)
    assert (ids(s, a), ids(s, b)) == ([0, 1], [2, 3]) and s.kv.gpu.num_free == 0
    late = make_request(4, 2, req_id=2)
    s.add_request(late)
    batch, _ = step(s)                         # late: LATER (no block); a needs a 3rd block: b is the victim
    assert batch.preempted == [b] and b.status is Status.WAITING and b.num_computed == 0
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1)]
    assert ids(s, a) == [0, 1, 3]              # b's blocks went back head first: 3 is at the left
    assert [g.request_id for g in s.waiting] == [1, 2] and s.num_preemptions == 1
    batch, out = step(s)                       # b's 9 tokens need 3 blocks, 1 free: LATER; a decodes, finishes
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1)] and out.finished == [a]
    batch, _ = step(s)                         # b recomputes prompt + its one output, late is admitted too
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 9), (2, 4)]
    assert ids(s, b) == [3, 1, 0] and ids(s, late) == [2]


def test_swap_out_then_swap_in_only_in_a_later_step():
    s = make_v0(4, num_cpu_blocks=8, mode="swap")
    a, b = make_request(8, 3, req_id=0), make_request(8, 5, req_id=1)
    s.add_request(a)
    s.add_request(b)
    step(s)
    batch, _ = step(s)
    assert batch.preempted == [b] and b.status is Status.SWAPPED
    assert (batch.swap_out_blocks, batch.swap_in_blocks) == (2, 0)
    assert b.swapped_block_ids == [0, 1] and ids(s, a) == [0, 1, 3]
    assert [g.request_id for g in s.swapped_groups] == [1] and not s.waiting
    batch, out = step(s)                       # b needs 2 full + 1 appended block, 1 free: stays swapped
    assert batch.swap_in_blocks == 0 and out.finished == [a]
    batch, _ = step(s)
    assert (batch.swap_in_blocks, batch.swap_out_blocks) == (2, 0)
    assert ids(s, b) == [3, 1, 0] and b.swapped_block_ids == [] and (b.num_computed, b.num_output) == (9, 2)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 1)]
    assert list(s.kv.cpu.free_ids)[:2] == [1, 0]


def test_no_new_prompts_while_a_group_is_swapped():
    s = make_v0(4, num_cpu_blocks=8, mode="swap")
    a, b = make_request(8, 3, req_id=0), make_request(8, 5, req_id=1)
    s.add_request(a)
    s.add_request(b)
    step(s)
    step(s)                                    # b swapped out
    s.add_request(make_request(1, 1, req_id=2))  # fits in the free block, but swapped groups come first
    batch, _ = step(s)
    assert [r.req_id for r, _ in batch.scheduled] == [0] and [g.request_id for g in s.waiting] == [2]


def test_watermark_keeps_admission_waiting_and_refuses_what_never_fits():
    s = make_v0(100, watermark=0.05)           # 5 blocks kept free
    big, small = make_request(360, 2, req_id=0), make_request(24, 2, req_id=1)
    s.add_request(big)
    s.add_request(small)
    batch, _ = step(s)                          # small: 10 free - 6 needed < 5: LATER
    assert batch.admitted == [big] and [g.request_id for g in s.waiting] == [1]
    s2 = make_v0(100, watermark=0.05)
    s2.add_request(make_request(384, 2, req_id=7))   # 96 blocks: 100 - 96 < 5, NEVER
    with pytest.raises(SimulationError, match="request 7 .* watermark"):
        s2.schedule()


def test_parallel_sampling_forks_the_prompt_and_copies_the_shared_last_block_once():
    s = make_v0(10)
    seqs = fork_pair(6, 3, row=0)
    for r in seqs:
        s.add_request(r)
    assert len(s.waiting) == 1
    batch, out = step(s)
    assert (batch.num_prefill_seqs, batch.num_prefill_tokens) == (1, 6)   # the prompt is computed once
    assert out.sampled == seqs and out.first_tokens == seqs
    assert ids(s, seqs[0]) == ids(s, seqs[1]) == [0, 1] and s.kv.gpu.ref[:2] == [2, 2]
    batch, _ = step(s)                          # first append into shared block 1: copy-on-write
    assert batch.copy_blocks == 1 and batch.num_decode_tokens == 2
    assert (ids(s, seqs[0]), ids(s, seqs[1])) == ([0, 2], [0, 1]) and s.kv.gpu.ref[:3] == [2, 1, 1]
    batch, out = step(s)
    assert batch.copy_blocks == 0 and out.finished == seqs


def test_a_forked_group_is_preempted_by_swap_and_each_sequence_copies_its_blocks():
    s = make_v0(6, num_cpu_blocks=16)
    a = make_request(8, 10, req_id=0)
    s.add_request(a)
    step(s)
    pair = fork_pair(6, 10, row=1)
    for r in pair:
        s.add_request(r)
    step(s)                                     # prefill-only: the pair shares [2, 3]; 2 blocks free
    assert (ids(s, pair[0]), ids(s, pair[1])) == ([2, 3], [2, 3])
    batch, _ = step(s)                          # a takes block 4; the pair may touch 2 blocks, 1 is free:
    assert ids(s, a) == [0, 1, 4]               # it is the last group, so it preempts itself, by swap (n=2)
    assert batch.preempted == [pair[0]] and all(r.status is Status.SWAPPED for r in pair)
    assert batch.swap_out_blocks == 4           # 2 blocks per sequence: the shared blocks are copied twice
    assert (pair[0].swapped_block_ids, pair[1].swapped_block_ids) == ([0, 1], [2, 3])
    assert list(s.kv.gpu.free_ids) == [3, 2, 5]
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1)]


def test_recompute_of_a_multi_sequence_group_is_an_error():
    s = make_v0(6, mode="recompute")
    s.add_request(make_request(8, 10, req_id=0))
    step(s)
    for r in fork_pair(6, 10, row=1):
        s.add_request(r)
    step(s)
    with pytest.raises(SimulationError, match="engine.preemption_mode"):
        s.schedule()


def test_running_out_of_cpu_swap_space_fails_in_one_line():
    s = make_v0(4, num_cpu_blocks=1, mode="swap")
    s.add_request(make_request(8, 3, req_id=0))
    s.add_request(make_request(8, 3, req_id=1))
    step(s)
    with pytest.raises(SimulationError) as e:
        s.schedule()
    assert "engine.swap_space" in str(e.value) and "lack of CPU swap space" in str(e.value)
    assert "\n" not in str(e.value)


def test_chunked_prefill_mixes_decodes_and_prompt_chunks_within_the_budget():
    s = make_v0(40, chunked=True, max_num_batched_tokens=16)
    a, b = make_request(20, 3, req_id=0), make_request(10, 2, req_id=1)
    s.add_request(a)
    s.add_request(b)
    batch, out = step(s)                        # a's first chunk takes the budget; all of a's blocks at once
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 16)] and not out.sampled
    assert ids(s, a) == [0, 1, 2, 3, 4] and [g.request_id for g in s.waiting] == [1]
    batch, out = step(s)                        # a finishes its prompt, b gets the 12 tokens left (10)
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(1, 10), (0, 4)]
    assert out.first_tokens == [b, a]           # new prompts are listed first in a V0 batch
    assert [g.request_id for g in s.running_groups] == [0, 1]   # running chunks before new prompts
    batch, _ = step(s)                          # both decode in one batch, in running order
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(0, 1), (1, 1)]


# ---------------------------------------------------------------------------- end to end
SCENARIO = ROOT / "scenarios" / "llama3-8b-h100-v0-swap.yaml"


SMALL = ["run.num_requests=120", "engine.num_gpu_blocks_override=512"]


def run(check_invariants: bool):
    from sim.config import load_scenario
    from sim.runner import run_scenario
    return run_scenario(load_scenario(SCENARIO, [*SMALL, f"run.check_invariants={str(check_invariants).lower()}"]))


def test_engine_completes_every_request_with_balanced_swap_traffic_deterministically():
    r1 = run(check_invariants=True)
    s = r1.summary
    assert s["completed"] == 120 and s["num_preemptions"] > 0
    assert s["num_swapped_out_blocks"] == s["num_swapped_in_blocks"] > 0
    assert s["num_copied_blocks"] > 0                # n=2 groups copy their shared last prompt block
    assert s["num_gpu_blocks"] == 512 and "null block" not in " ".join(r1.deployment.describe())
    steps = r1.steps
    assert not ((steps["swap_in_blocks"] > 0) & (steps["num_preempted"] > 0)).any()
    r2 = run(check_invariants=False)          # same run without the checks: bit for bit the same
    keys = [k for k in s if k != "wall_time_s"]
    assert json.dumps({k: s[k] for k in keys}, default=str) == json.dumps({k: r2.summary[k] for k in keys}, default=str)


def test_too_little_swap_space_fails_the_run_in_one_line(capsys):
    from sim.cli import main
    sets = [a for kv in ["engine.swap_space=0.001", *SMALL] for a in ("--set", kv)]
    code = main(["run", str(SCENARIO), *sets, "--out", str(Path("/tmp") / "pagesim-v0-noswap"), "--no-report"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "engine.swap_space" in err[0] and "lack of CPU swap space" in err[0]


def test_v0_refuses_prefix_caching_and_async_scheduling_in_one_line():
    from sim.config import load_scenario
    with pytest.raises(ScenarioError, match="engine.enable_prefix_caching"):
        load_scenario(SCENARIO, ["engine.enable_prefix_caching=true"])
    with pytest.raises(ScenarioError, match="engine.async_scheduling"):
        load_scenario(SCENARIO, ["engine.async_scheduling=true"])
    with pytest.raises(ScenarioError, match="engine.scheduling_policy"):
        load_scenario(SCENARIO, ["engine.scheduling_policy=priority"])
    sc = load_scenario(SCENARIO)               # V0 defaults: no prefix caching, no chunked prefill at 8K context
    assert sc.engine.enable_prefix_caching is False and sc.engine.enable_chunked_prefill is False
    assert sc.engine.async_scheduling is False
