"""Tiered KV cache (sim.kv_offload): hand-worked LRU tiers, load times, a request whose prefix was
evicted from the GPU but is in the CPU tier, tier size 0 == no tier, determinism, bad config."""

from __future__ import annotations

import pytest
from conftest import make_request, make_scheduler

from sim.config import scenario_from_dict
from sim.errors import ScenarioError
from sim.kv_offload import KVOffload, OffloadSetup, tier_blocks
from sim.lru_tier import own_key_base
from sim.runner import run_scenario

MIB = 1 << 20


def setup(cpu: int, disk: int = 0, **kw) -> OffloadSetup:
    base = dict(cpu_blocks=cpu, disk_blocks=disk, block_bytes_per_rank=2 * MIB, tensor_parallel_size=1,
                s_per_block_copy=1e-4, s_per_byte=1 / 50e9, disk_bytes_per_s=5e9)
    base.update(kw)
    return OffloadSetup(**base)


# ------------------------------------------------------------------ the tiers by hand
def test_cpu_evictions_fall_into_the_disk_tier_and_lookup_stops_at_the_first_miss():
    off = KVOffload(setup(cpu=2, disk=1))
    for k in (1, 2, 3):                 # CPU [1 2] -> 3 evicts 1 into the disk
        off.store(k)
    assert list(off.cpu) == [2, 3] and list(off.disk) == [1]
    off.store(4)                        # CPU evicts 2 into the disk, which evicts 1: gone
    assert list(off.cpu) == [3, 4] and list(off.disk) == [2]
    off.store(3)                        # already there: refreshed, not stored again
    assert list(off.cpu) == [4, 3] and off.num_stored_blocks == 4 and off.num_disk_stored_blocks == 2
    assert off.lookup([3, 4, 9]) == (2, 0)
    assert off.lookup([2, 3, 4]) == (2, 1)       # disk, cpu, cpu
    assert off.lookup([1, 3]) == (0, 0)          # the chain breaks at its first block
    off.store(2)                                 # a stored block leaves the disk (exclusive tiers)
    assert 2 in off.cpu and 2 not in off.disk


def test_load_time_is_blocks_times_latency_plus_bytes_over_bandwidth_and_loads_queue():
    s = setup(cpu=100)
    # 10 blocks x (100 us + 2 MiB / 50 GB/s) = 10 x (1e-4 + 2097152 / 5e10) = 1.4194304e-3 s
    assert s.load_time_s(10, 0) == pytest.approx(1.4194304e-3, rel=1e-12)
    # 2 disk blocks also cross the host link, after 2 MiB / 5 GB/s each: + 2 x 4.194304e-4
    assert s.load_time_s(0, 2) == pytest.approx(2 * (1e-4 + 4.194304e-5) + 2 * 4.194304e-4, rel=1e-12)
    # TP=2: each rank moves its own 2 MiB shard over its own link in the same time; a disk
    # block is both shards (4 MiB)
    s2 = setup(cpu=100, tensor_parallel_size=2)
    assert s2.load_time_s(10, 0) == s.load_time_s(10, 0)
    assert s2.load_time_s(0, 1) == pytest.approx(1e-4 + 4.194304e-5 + 4 * MIB / 5e9, rel=1e-12)
    off = KVOffload(s)
    for k in range(10):
        off.store(k)
    keys = list(range(10))
    t1 = off.load(keys, 10, 0, now_s=1.0)
    t2 = off.load(keys[:5], 5, 0, now_s=1.0)      # waits for the first load on the link
    assert t1 == pytest.approx(1.0 + 1.4194304e-3) and t2 == pytest.approx(t1 + 1.4194304e-3 / 2)
    assert off.load_bytes == 15 * 2 * MIB and off.num_cpu_hit_blocks == 15


def test_tier_blocks_counts_bytes_of_all_tp_ranks():
    # 1 GiB / (2 MiB per rank x 4 ranks) = 128 blocks (vLLM: kv_offloading_size is the total over ranks)
    assert tier_blocks(1.0, 2 * MIB, 4) == 128
    assert tier_blocks(0.0, 2 * MIB, 1) == 0


# ------------------------------------------------------------------ the scheduler's load-before-schedule
def run_until_done(s, reqs, now_s=0.0):
    while any(r.status.name != "FINISHED" for r in reqs):
        s.now_s = now_s
        batch = s.schedule()
        s.update_from_output(batch)


def test_prefix_evicted_from_the_gpu_is_loaded_from_the_cpu_and_shortens_the_prefill():
    # 7 usable GPU blocks of 16 tokens.  A = 64 shared tokens (4 blocks) + 16 of its own; B (102
    # tokens, 7 blocks) then takes every block, evicting A's prefix from the GPU cache.  C = the
    # same 64 shared tokens + 16 of its own: no GPU hit, 4 blocks in the CPU tier (A's 5th block
    # is A's own content), so C waits for 4 blocks to load, then prefills 80 - 64 = 16 tokens.
    s = make_scheduler(num_blocks=8, block_size=16, caching=True)
    s.kv.offload = KVOffload(setup(cpu=100))
    s.offload = s.kv.offload
    a = make_request(80, 2, req_id=0, segments=((7, 64), (100, 16)))
    b = make_request(100, 2, req_id=1)
    s.add_request(a)
    run_until_done(s, [a])
    assert s.offload.num_stored_blocks == 5            # A's 5 full prompt blocks, as computed
    s.add_request(b)
    run_until_done(s, [b])
    assert s.kv.pool.lookup(a.prefix_hashes[0]) is None   # A's prefix left the GPU
    c = make_request(80, 2, req_id=2, segments=((7, 64), (101, 16)))
    s.add_request(c)
    s.now_s = 10.0
    batch = s.schedule()
    s.update_from_output(batch)
    assert batch.is_empty and not s.waiting and [e[2] for e in s.loading] == [c]
    ready = 10.0 + 4 * (1e-4 + 2 * MIB / 50e9)
    assert s.loading[0][0] == pytest.approx(ready)
    assert c.nblocks == 4                       # blocks for the 64 loaded tokens (the whole 82 must fit)
    s.now_s = ready - 1e-9                      # not yet loaded: nothing to schedule
    batch = s.schedule()
    s.update_from_output(batch)
    assert batch.is_empty and s.loading
    s.now_s = ready
    batch = s.schedule()
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(2, 16)]    # 80 - 64 loaded tokens
    assert s.offload.num_cpu_hit_blocks == 4 and s.offload.query_blocks == 5 + 6 + 5   # A, B, C looked up
    assert c.prefix_hit_tokens == 0              # the GPU prefix cache itself did not hit


def test_without_a_tier_the_same_request_prefills_its_whole_prompt():
    s = make_scheduler(num_blocks=8, block_size=16, caching=True)
    a = make_request(80, 2, req_id=0, segments=((7, 64), (100, 16)))
    b = make_request(100, 2, req_id=1)
    for r in (a, b):
        s.add_request(r)
        run_until_done(s, [r])
    c = make_request(80, 2, req_id=2, segments=((7, 64), (101, 16)))
    s.add_request(c)
    batch = s.schedule()
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(2, 80)]


def test_a_whole_prompt_from_the_cpu_tier_recomputes_its_last_token():
    # C = exactly A's 64 shared tokens: the GPU lookup would stop at 63 tokens; the tier gives all
    # 4 blocks, and the last token is recomputed after the load (vLLM _update_waiting_for_remote_kv).
    s = make_scheduler(num_blocks=8, block_size=16, caching=True)
    s.kv.offload = s.offload = KVOffload(setup(cpu=100))
    a = make_request(64, 2, req_id=0, segments=((7, 64),))
    b = make_request(100, 2, req_id=1)
    for r in (a, b):
        s.add_request(r)
        run_until_done(s, [r])
    c = make_request(64, 2, req_id=2, segments=((7, 64),))
    s.add_request(c)
    s.now_s = 5.0
    s.update_from_output(s.schedule())
    s.now_s = 6.0
    batch = s.schedule()
    assert [(r.req_id, n) for r, n in batch.scheduled] == [(2, 1)]


# ------------------------------------------------------------------ whole runs
BASE = {
    "name": "offload-test", "model": "llama-3-8b", "hardware": {"gpu": "H100-SXM"},
    "engine": {"num_gpu_blocks_override": 1200, "max_num_seqs": 64},
    "workload": {"arrival": {"process": "poisson", "rate": 3},
                 "lengths": {"input": {"dist": "uniform", "low": 64, "high": 256},
                             "output": {"dist": "uniform", "low": 8, "high": 64}},
                 "shared_prefix": {"tokens": 1024, "num_prefixes": 40, "assign": "random"}},
    "run": {"seed": 3, "num_requests": 300},
}


def scenario(**engine):
    raw = {**BASE, "engine": {**BASE["engine"], **engine}}
    return scenario_from_dict(raw, "test.yaml")


def test_tier_of_size_zero_is_the_baseline_run_exactly():
    base = run_scenario(scenario())
    zero = run_scenario(scenario(kv_offloading_size=0))
    assert zero.summary["kv_offload_cpu_hit_tokens"] == 0 and zero.summary["kv_offload_cpu_blocks"] == 0
    assert zero.summary["kv_offload_store_bytes"] == 0
    assert base.requests.equals(zero.requests)
    for k, v in base.summary.items():
        if k != "simulator_wall_s":
            assert zero.summary[k] == v, k


def test_a_cpu_tier_turns_gpu_misses_into_loads_and_lowers_ttft():
    # 40 prefixes x 1024 tokens = 2,560 blocks: twice the 1,199 usable GPU blocks; an 8 GiB
    # CPU tier (4,096 blocks of 2 MiB) holds them all.
    base = run_scenario(scenario())
    on = run_scenario(scenario(kv_offloading_size=8, **{}))
    s = on.summary
    assert s["kv_offload_cpu_blocks"] == 8 * 1024 // 2
    assert s["completed"] == base.summary["completed"] == 300     # loads wake an idle engine
    assert s["kv_offload_cpu_hit_tokens"] > 0 and s["kv_offload_disk_hit_tokens"] == 0
    assert s["kv_offload_prefill_tokens_saved"] == s["kv_offload_cpu_hit_tokens"]
    assert s["kv_offload_load_bytes"] == s["kv_offload_cpu_hit_tokens"] // 16 * 2 * MIB
    assert s["median_ttft_ms"] < base.summary["median_ttft_ms"]
    again = run_scenario(scenario(kv_offloading_size=8))
    assert again.requests.equals(on.requests)                   # deterministic


def test_disk_tier_catches_what_a_small_cpu_tier_evicts_and_invariants_hold():
    sc = scenario(kv_offloading_size=0.5, kv_offloading_backend="lmcache", kv_offloading_disk_size=16)
    sc = scenario_from_dict({**BASE, "engine": {**BASE["engine"], "kv_offloading_size": 0.5,
                                                "kv_offloading_backend": "lmcache", "kv_offloading_disk_size": 16},
                             "run": {**BASE["run"], "num_requests": 120, "check_invariants": True}}, "t.yaml")
    s = run_scenario(sc).summary
    assert s["kv_offload_cpu_blocks"] == 256 and s["kv_offload_disk_blocks"] == 8192
    assert s["kv_offload_disk_hit_tokens"] > 0
    assert s["completed"] == 120


@pytest.mark.parametrize("engine, expect", [
    ({"kv_offloading_size": -1}, "engine.kv_offloading_size"),
    ({"kv_offloading_size": 4, "enable_prefix_caching": False}, "enable_prefix_caching"),
    ({"kv_offloading_disk_size": 8}, "set engine.kv_offloading_size too"),
    ({"kv_offloading_size": 4, "kv_offloading_disk_size": 8}, "kv_offloading_backend: lmcache"),
    ({"kv_offloading_size": 4, "scheduler": "vllm-v0"}, "vllm-v1"),
    ({"kv_offloading_size": 4, "kv_offloading_backend": "disk"}, "kv_offloading_backend"),
])
def test_bad_offloading_config_is_refused_in_one_line(engine, expect):
    with pytest.raises(ScenarioError) as e:
        scenario(**engine)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and msg.startswith("test.yaml")


def test_bulk_store_equals_one_by_one_and_keys_equal_block_hashes():
    from sim.block_hash import block_hash
    from sim.kv_cache_manager import KVCacheManager
    one, bulk = KVOffload(setup(cpu=5, disk=3)), KVOffload(setup(cpu=5, disk=3))
    seq = [1, 2, 3, 1, 4, 5, 6, 7, 2, 8, 9, 3, 10]
    for k in seq:
        one.store(k)
    for part in (seq[:4], seq[4:7], seq[7:10], seq[10:]):    # batches no longer than the slack
        bulk.store_many(part)
    assert list(one.cpu) == list(bulk.cpu) and list(one.disk) == list(bulk.disk)
    assert (one.num_stored_blocks, one.num_disk_stored_blocks) == (bulk.num_stored_blocks, bulk.num_disk_stored_blocks)
    kv = KVCacheManager(8, 16, True, 4096)
    r = make_request(100, 2, req_id=5, segments=((3, 40),))
    # 40 shared tokens = 2 full shared blocks (their chained hashes), then the prompt's own blocks
    base = -((5 << 20) + 1)
    assert kv._prompt_keys(r, 0, 6) == [block_hash(r, 0, 16), block_hash(r, 1, 16), base - 2, base - 3, base - 4, base - 5]
    assert kv._prompt_keys(r, 1, 4) == [block_hash(r, 1, 16), base - 2, base - 3]
    assert kv._prompt_keys(make_request(100, 2, req_id=6), 0, 2) == [-((6 << 20) + 1), -((6 << 20) + 1) - 1]


def test_store_run_equals_store_for_fresh_keys():
    """A prompt's own blocks stored as one run: the same tier, key by key, as storing them one
    at a time, evictions cutting into the oldest run included."""
    one, bulk = KVOffload(setup(cpu=4)), KVOffload(setup(cpu=4))
    a, b = own_key_base(1), own_key_base(2)
    for k in (a - 0, a - 1, a - 2, b - 3, b - 4, b - 5):
        one.store(k)
    bulk.store_run(a, 0, 3)
    bulk.store_run(b, 3, 6)
    assert list(one.cpu) == list(bulk.cpu) == [a - 2, b - 3, b - 4, b - 5]
    assert one.num_stored_blocks == bulk.num_stored_blocks == 6
    assert a - 1 not in bulk.cpu and a - 2 in bulk.cpu


def test_report_section_only_when_the_tier_is_on(tmp_path):
    from reports.charts_offload import offload
    from reports.data import ReportData
    base = {"total_input_tokens": 1000, "prefix_cache_hit_rate": 0.2}
    assert offload(ReportData(tmp_path, "run", "x", summary=base)) is None
    on = {**base, "kv_offload_cpu_hit_tokens": 250, "kv_offload_disk_hit_tokens": 50, "kv_offload_cpu_blocks": 10}
    sec = offload(ReportData(tmp_path, "run", "x", summary=on))
    assert sec is not None and sec.title == "Tiered KV cache"
    # 250 + 50 of 1,000 prompt tokens came from the tiers; 200 from the GPU cache; 500 computed
    assert list(sec.charts[0].fig.data[0].y) == [200.0, 250.0, 50.0, 500.0]
    assert "30" in sec.charts[0].reading


def test_prompt_lookup_equals_lookup_over_the_prompt_keys():
    from sim.kv_cache_manager import KVCacheManager
    kv = KVCacheManager(8, 16, True, 4096)
    kv.offload = off = KVOffload(setup(cpu=6, disk=4))
    r = make_request(100, 2, req_id=5, segments=((3, 40),))
    keys = kv._prompt_keys(r, 0, 6)
    for k in (keys[1], keys[0], keys[3], keys[2]):
        off.store(k)
    assert kv.offload_lookup(r, 0) == (keys[:4], 4, 0) and off.lookup(keys) == (4, 0)
    assert kv.offload_lookup(r, 32) == (keys[2:4], 2, 0)     # past a 2-block GPU hit
