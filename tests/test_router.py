"""Routing across replicas: hand-worked choices of every policy, the prefix index, scrape delay,
and an end-to-end check that prefix-aware routing raises the prefix-hit rate."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest

from sim.block_hash import shared_prefix_hashes
from sim.config import load_scenario
from sim.errors import ScenarioError
from sim.kv_state import KVState
from sim.request import Request
from sim.router import PrefixIndex, Router
from sim.runner import run_scenario


class FakeScheduler:
    def __init__(self, waiting: int):
        self.waiting = deque(range(waiting))


class FakeReplica:
    def __init__(self, index: int, usage: float = 0.0, waiting: int = 0, outstanding: int = 0):
        self.index = index
        self.usage = usage
        self.scheduler = FakeScheduler(waiting)
        self.outstanding_tokens = outstanding

    def kv_state(self) -> KVState:
        return (self.usage, 0.0, 0.0, 0.0, 0.0, 0.0)


def req(i: int, segments: tuple[tuple[int, int], ...] = (), prompt: int = 100) -> Request:
    return Request(i, 0.0, prompt, 10, segments)


def test_round_robin_cycles() -> None:
    reps = [FakeReplica(i) for i in range(3)]
    r = Router("round-robin", 3, 16, 100)
    assert [r.route(reps, req(i)).index for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert r.routed == [3, 2, 2]


def test_least_outstanding_tokens_ties_to_lowest_index() -> None:
    reps = [FakeReplica(0, outstanding=50), FakeReplica(1, outstanding=20), FakeReplica(2, outstanding=20)]
    assert Router("least-outstanding-tokens", 3, 16, 100).route(reps, req(0)).index == 1


def test_least_kv_usage_reads_live_usage_and_rotates_among_equals() -> None:
    reps = [FakeReplica(0, usage=0.5), FakeReplica(1, usage=0.2), FakeReplica(2, usage=0.7)]
    r = Router("least-kv-usage", 3, 16, 100)
    assert r.route(reps, req(0)).index == 1
    for rep in reps:
        rep.usage = 0.3                      # all equal: rotate from the replica after the last choice
    assert [r.route(reps, req(i)).index for i in range(4)] == [2, 0, 1, 2]


def test_scrape_interval_freezes_the_view_until_the_next_scrape() -> None:
    reps = [FakeReplica(0, usage=0.1), FakeReplica(1, usage=0.9)]
    r = Router("least-kv-usage", 2, 16, 100, scrape_interval_s=1.0)
    r.scrape(reps)
    reps[0].usage = 0.95                     # changed after the scrape: the router does not see it
    assert r.route(reps, req(0)).index == 0
    r.scrape(reps)
    assert r.route(reps, req(1)).index == 1


def test_prefix_index_matches_leading_blocks_and_evicts_lru() -> None:
    idx = PrefixIndex(2, capacity_blocks=3)
    idx.record(0, [1, 2, 3])
    assert idx.matched_blocks(0, [1, 2, 9]) == 2 and idx.matched_blocks(1, [1]) == 0
    idx.record(0, [1])                       # 1 becomes most recent
    idx.record(0, [4])                       # evicts 2, the least recently sent
    assert idx.matched_blocks(0, [1, 2]) == 1 and idx.matched_blocks(0, [3, 4]) == 2


def test_prefix_aware_follows_the_prefix_and_breaks_ties_by_outstanding_tokens() -> None:
    reps = [FakeReplica(0, outstanding=10), FakeReplica(1, outstanding=0)]
    r = Router("prefix-aware", 2, 16, 1000)
    a = ((7, 64),)                           # one shared 64-token segment = 4 blocks of 16
    assert r.route(reps, req(0, a)).index == 1            # no match anywhere: fewer outstanding tokens
    reps[1].outstanding_tokens = 500
    assert r.route(reps, req(1, a)).index == 1            # the prefix wins over load
    assert r.route(reps, req(2, ((8, 64),))).index == 0   # another prefix: least outstanding


def test_weighted_scores_by_hand() -> None:
    reps = [FakeReplica(0, usage=0.5, waiting=4), FakeReplica(1, usage=0.0, waiting=0)]
    r = Router("weighted", 2, 16, 1000, weights={"prefix": 2.0, "kv_usage": 1.0, "queue": 1.0})
    seg = ((7, 64),)
    r.index.record(0, shared_prefix_hashes(seg, 16))
    r.scrape(reps)
    # replica 0: prefix 2 * 4/6 + kv 0.5 + queue 0 = 1.833; replica 1: 0 + 1 + 1 = 2
    assert r._weighted_scores(reps, req(0, seg, prompt=100), shared_prefix_hashes(seg, 16)) == pytest.approx([2 * 4 / 6 + 0.5, 2.0])
    assert r.route(reps, req(0, seg, prompt=100)).index == 1
    r2 = Router("weighted", 2, 16, 1000, weights={"prefix": 4.0, "kv_usage": 1.0, "queue": 1.0})
    r2.index.record(0, shared_prefix_hashes(seg, 16))
    assert r2.route(reps, req(0, seg, prompt=100)).index == 0   # 4 * 4/6 + 0.5 = 3.17 > 2


def test_load_imbalance_is_max_over_mean() -> None:
    r = Router("round-robin", 2, 16, 100)
    r.routed_tokens = [300, 100]
    assert r.load_imbalance() == pytest.approx(1.5)


def _scenario(tmp_path: Path, router: str, extra: str = "") -> Path:
    p = tmp_path / f"{router}.yaml"
    p.write_text(f"""
name: routing-{router}
model: llama-3-8b
hardware: {{gpu: H100-SXM}}
engine: {{num_replicas: 4, router: {router}, num_gpu_blocks_override: 3000 {extra}}}
workload:
  arrival: {{process: poisson, rate: 40}}
  lengths: {{input: {{dist: uniform, low: 50, high: 300}}, output: {{dist: uniform, low: 20, high: 100}}}}
  shared_prefix: {{tokens: 1024, num_prefixes: 8, assign: random}}
run: {{seed: 3, num_requests: 800}}
""")
    return p


def test_prefix_aware_routing_raises_hit_rate_end_to_end(tmp_path: Path) -> None:
    rr = run_scenario(load_scenario(_scenario(tmp_path, "round-robin"))).summary
    pa = run_scenario(load_scenario(_scenario(tmp_path, "prefix-aware"))).summary
    assert rr["completed"] == pa["completed"] == 800
    assert rr["router"] == "round-robin" and pa["router"] == "prefix-aware"
    assert rr["load_imbalance"] < 1.1                      # round robin spreads requests evenly
    assert sum(rr["replica_requests"]) == 800
    # each of the 8 system prompts is cached on one replica instead of on all four
    assert pa["prefix_cache_hit_rate"] > rr["prefix_cache_hit_rate"] + 0.02
    assert len(pa["replica_prefix_cache_hit_rate"]) == 4


def test_scraped_least_kv_usage_runs_and_is_deterministic(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "least-kv-usage", ", router_scrape_interval_s: 0.5")
    a = run_scenario(load_scenario(p)).summary
    b = run_scenario(load_scenario(p)).summary
    assert a == b and a["completed"] == 800


def test_weighted_router_needs_a_positive_weight(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="router_weights"):
        load_scenario(_scenario(tmp_path, "weighted"))
    with pytest.raises(ScenarioError, match="router_weights.cache"):
        load_scenario(_scenario(tmp_path, "weighted", ", router_weights: {cache: 1}"))
