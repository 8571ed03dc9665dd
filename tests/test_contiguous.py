"""Contiguous-reservation baselines (vLLM paper Fig. 2): hand-worked first-fit placement,
coalescing, external fragmentation, reservation sizes, the KV state by hand, a Hypothesis
property test of the space, and the allocators compared end to end."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from sim.config import load_scenario
from sim.contiguous import ContiguousKVManager, reservation_tokens
from sim.errors import ScenarioError
from sim.request import Request
from sim.runner import run_scenario

BASE = "scenarios/sweeps/block-size-allocators.yaml"


def req(i: int, prompt: int, out: int) -> Request:
    return Request(i, 0.0, prompt, out)


def test_reservation_sizes() -> None:
    assert reservation_tokens("contiguous-max", 300, 4096) == 4096
    assert reservation_tokens("contiguous-pow2", 300, 4096) == 512
    assert reservation_tokens("contiguous-pow2", 512, 4096) == 512
    assert reservation_tokens("contiguous-pow2", 3000, 2048) == 2048      # never beyond max_model_len
    assert reservation_tokens("contiguous-oracle", 300, 4096) == 300
    assert reservation_tokens("contiguous-pow2", 3000, 8192, capacity=3500) == 3500   # never beyond the cache


def test_contiguous_max_longer_than_the_cache_is_refused_in_one_line() -> None:
    with pytest.raises(ScenarioError) as e:
        run_scenario(load_scenario(BASE, ["engine.allocator=contiguous-max", "engine.num_gpu_blocks_override=256",
                                          "workload.lengths.input.high=300", "workload.lengths.output.high=100"]))
    assert "engine.allocator" in str(e.value) and "max_model_len" in str(e.value) and "\n" not in str(e.value)


def test_first_fit_coalescing_and_external_fragmentation_by_hand() -> None:
    kv = ContiguousKVManager(num_gpu_blocks=10, page_tokens=10, mode="contiguous-oracle", max_model_len=100)  # 100 slots
    a, b, c, d = req(0, 20, 10), req(1, 10, 10), req(2, 30, 10), req(3, 40, 10)   # 30, 20, 40, 50 slots
    assert kv.allocate_slots(a, 30) and kv.allocate_slots(b, 20) and kv.allocate_slots(c, 40)
    assert kv.regions == {0: (0, 30), 1: (30, 20), 2: (50, 40)}
    assert (kv.hole_starts, kv.hole_lens) == ([90], [10])
    kv.free(a)                                       # holes: [0, 30) and [90, 100)
    assert (kv.hole_starts, kv.hole_lens) == ([0, 90], [30, 10])
    assert not kv.allocate_slots(d, 50)              # 40 free slots, largest hole 30: waits
    assert kv.external_fragmentation() == pytest.approx(10 / 100)
    assert d.req_id not in kv.regions and kv.reserved_slots == 60
    kv.free(b)                                       # merges with the hole before: [0, 50)
    assert (kv.hole_starts, kv.hole_lens) == ([0, 90], [50, 10])
    assert kv.allocate_slots(d, 50) and kv.regions[3] == (0, 50)   # first fit
    kv.free(c)                                       # merges with the hole after: [50, 100)
    assert (kv.hole_starts, kv.hole_lens) == ([50], [50])
    kv.check_invariants([d], None)


def test_state_fractions_by_hand() -> None:
    kv = ContiguousKVManager(num_gpu_blocks=100, page_tokens=10, mode="contiguous-pow2", max_model_len=1000)  # 1000 slots
    a = req(0, 100, 100)                             # final 200 -> reserves 256
    assert kv.allocate_slots(a, 100) and a.nblocks == 256
    usage, tokens, internal, reserved, cached, external = kv.state_fractions(computed=100)
    assert (usage, tokens, internal, reserved, cached, external) == pytest.approx((0.256, 0.1, 0.056, 0.1, 0.0, 0.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 60), st.integers(1, 40)), min_size=1, max_size=60))
def test_regions_and_holes_always_tile_the_space(ops: list[tuple[bool, int, int]]) -> None:
    kv = ContiguousKVManager(num_gpu_blocks=16, page_tokens=16, mode="contiguous-oracle", max_model_len=256)
    live: list[Request] = []
    for i, (alloc, p, o) in enumerate(ops):
        if alloc or not live:
            r = req(i, p, o)
            free_before = kv.capacity - kv.reserved_slots
            ok = kv.allocate_slots(r, p)
            if ok:
                live.append(r)
            else:                                    # refused only when no hole is large enough
                assert max(kv.hole_lens, default=0) < p + o and free_before == kv.capacity - kv.reserved_slots
        else:
            kv.free(live.pop((p * 7 + o) % len(live)))
        kv.check_invariants(live, None)
        assert kv.reserved_slots + sum(kv.hole_lens) == kv.capacity


def _run(alloc: str) -> dict:
    sc = load_scenario(BASE, [f"engine.allocator={alloc}", "workload.arrival.rate=16", "run.num_requests=300",
                              "run.check_invariants=true"])
    return run_scenario(sc).summary


def test_allocators_end_to_end_order_concurrency_and_waste() -> None:
    s = {a: _run(a) for a in ("paged", "contiguous-oracle", "contiguous-pow2", "contiguous-max")}
    for v in s.values():
        assert v["completed"] == 300 and v["num_preemptions"] == 0 or v is s["paged"]
    conc = {a: v["mean_num_running"] for a, v in s.items()}
    assert conc["paged"] >= conc["contiguous-oracle"] >= conc["contiguous-pow2"] > conc["contiguous-max"]
    waste = {a: v["kv_internal_frag_frac"] + v["kv_reserved_frac"] + v["kv_external_frag_frac"] for a, v in s.items()}
    assert waste["contiguous-max"] > waste["contiguous-pow2"] > waste["paged"]
    share = {a: v["kv_token_state_frac"] / v["kv_cache_usage_mean"] for a, v in s.items()}
    assert share["paged"] > 0.9 > share["contiguous-oracle"] and share["contiguous-max"] < 0.4
    assert s["paged"]["kv_external_frag_frac"] == 0.0 and s["contiguous-max"]["num_gpu_blocks"] == 2048


def test_contiguous_refuses_prefix_caching_and_v0_in_one_line() -> None:
    with pytest.raises(ScenarioError, match="engine.enable_prefix_caching"):
        load_scenario(BASE, ["engine.allocator=contiguous-max", "engine.enable_prefix_caching=true"])
    with pytest.raises(ScenarioError, match="engine.allocator"):
        load_scenario(BASE, ["engine.allocator=contiguous-max", "engine.scheduler=vllm-v0"])
    sc = load_scenario("scenarios/small.yaml", ["engine.allocator=contiguous-oracle"])   # caching defaults off
    assert sc.engine.enable_prefix_caching is False
