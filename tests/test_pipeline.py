"""Pipeline parallelism (sim.pipeline + sim.engine.pipeline_loop.serve_pipeline) against hand-worked truths:
vLLM's layer split, per-stage memory and the min-over-stages block count, the pipeline's token
timing at batch size 1 (a full traversal per token) and with many requests (one batch leaving
every stage time once the pipeline is full), and PP = 1 equal to the synchronous engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.config import load_scenario
from sim.cost_model import StepCoster, constant_profile
from sim.deployment import build_deployment
from sim.engine import simulate
from sim.errors import ScenarioError
from sim.hardware import find_preset
from sim.kv_cache_manager import KVCacheManager
from sim.metrics import Recorder
from sim.model_catalog import PRESETS
from sim.pipeline import PipelineClock, pipeline_capacity, plan_stages, pp_indices, stage_layers
from sim.replica import Replica
from sim.requests_table import RequestTable
from sim.router import Router
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1

GIB = 1 << 30


# ------------------------------------------------------------------ layer split
@pytest.mark.parametrize(("layers", "pp", "expected"), [
    (80, 2, (40, 40)),                           # even
    (80, 3, (27, 27, 26)),                       # 26 each, 2 left: to stages -2 and -3
    (32, 5, (6, 6, 7, 7, 6)),                    # 6 each, 2 left: stages 3 and 2; first and last spared
    (10, 4, (2, 3, 3, 2)),                       # 2 each, 2 left: the middle stages
    (7, 4, (2, 2, 2, 1)),                        # 1 each, 3 left: every stage but the last
    (126, 8, (15, 16, 16, 16, 16, 16, 16, 15)),  # Llama-3.1-405B on 8 stages: 15 each, 6 left
    (5, 5, (1, 1, 1, 1, 1)),
])
def test_layer_split_is_vllms_get_pp_indices(layers, pp, expected):
    assert stage_layers(layers, pp) == expected
    assert sum(expected) == layers


def test_pp_indices_are_contiguous_ranges():
    # 80 layers, 3 stages (27, 27, 26): [0, 27), [27, 54), [54, 80)
    assert [pp_indices(80, r, 3) for r in range(3)] == [(0, 27), (27, 54), (54, 80)]
    assert stage_layers(80, 2, (30, 50)) == (30, 50)          # VLLM_PP_LAYER_PARTITION
    with pytest.raises(ValueError):
        stage_layers(80, 2, (30, 40))


# ------------------------------------------------------------------ memory per stage
def test_middle_stage_memory_and_blocks_are_hand_worked():
    # Llama-3-70B, TP2 x PP4 on H100 SXM, 0.9 utilisation, 8192 batched tokens, 1024 seqs.
    # One layer on one TP rank: q = 32 heads x 128 = 4096, kv = 2 x 4 heads x 128 = 1024,
    # attention 8192 x (4096 + 1024) + 4096 x 8192 = 75,497,472; MLP 3 x 8192 x 14336 = 352,321,536
    # -> 427,819,008 params x 2 bytes = 855,638,016 B; norms 2 x 8192 x 2 = 32,768 B.
    # A middle stage (20 layers, no embedding or head) + the rotary cache 8192 x 128 x 2:
    weights = 20 * (855_638_016 + 32_768) + 2_097_152
    # profile forward peak per token: residual + input 2 x 8192, MLP 3 x 14336, all-reduce out 8192
    forward = 8192 * (2 * 8192 + 3 * 14336 + 8192) * 2
    other = GIB                                      # non-torch 0.25 + NCCL 0.25 + CUDA graphs 0.5 GiB
    requested = math.ceil(int(79.19 * GIB) * 0.9)
    block = 2 * 20 * 4 * 128 * 2 * 16                # K and V, 20 layers, 4 KV heads / rank, 16 tokens
    blocks = (requested - weights - forward - other) // block
    stages = plan_stages(PRESETS["llama-3-70b"], find_preset("H100-SXM"), tp=2, pp=4, block_size=16,
                         kv_cache_dtype="auto", gpu_memory_utilization=0.9, max_num_batched_tokens=8192,
                         max_num_seqs=1024)
    assert [s.layers for s in stages] == [20, 20, 20, 20]
    assert stages[1].weight_bytes == weights and stages[2].weight_bytes == weights
    assert stages[1].block_bytes == block
    assert stages[1].num_gpu_blocks == blocks
    # the first stage adds the embedding (128,256 x 8192 / 2 rows x 2 B), the last the LM head and
    # final norm and the sampler's profile peak: both have less room than the middle ones
    assert stages[0].weight_bytes == weights + 128_256 * 8192 // 2 * 2
    assert stages[0].num_gpu_blocks < blocks and stages[3].num_gpu_blocks < stages[0].num_gpu_blocks


def test_engine_block_count_is_the_min_over_stages():
    kw = dict(tp=2, pp=4, block_size=16, kv_cache_dtype="auto", gpu_memory_utilization=0.9,
              max_num_batched_tokens=8192, max_num_seqs=1024)
    model, hw = PRESETS["llama-3-70b"], find_preset("H100-SXM")
    cap, stages = pipeline_capacity(model, hw, swap_space_gib=4.0, max_model_len=8192, **kw)
    assert cap.num_gpu_blocks == min(s.num_gpu_blocks for s in stages) == stages[3].num_gpu_blocks
    assert cap.block_bytes == stages[3].block_bytes


def test_a_model_that_does_not_fit_one_stage_is_refused_in_one_line():
    with pytest.raises(ScenarioError, match="stage 0"):
        plan_stages(PRESETS["llama-3-70b"], find_preset("H100-SXM"), tp=1, pp=1, block_size=16,
                    kv_cache_dtype="auto", gpu_memory_utilization=0.9, max_num_batched_tokens=8192,
                    max_num_seqs=1024)


# ------------------------------------------------------------------ timing
def run_pipeline(table: RequestTable, *, stages: int, stage_s: float, send_s_per_token: float = 0.0,
                 overhead_s: float = 0.0, budget: int = 2048, num_blocks: int = 100_000, max_num_seqs: int = 4096,
                 caching: bool = False, lanes: bool = True, coster: StepCoster | None = None,
                 check: bool = False, policy: str = "fcfs", quiet: bool = True):
    """One replica; every stage takes `stage_s` whatever the batch (a constant profile of
    `stage_s` split in `stages` shares of 1 each)."""
    lim = SchedulerLimits(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=8192,
                          pipeline_parallel_size=stages, scheduling_policy=policy)
    sched = SchedulerV1(lim, KVCacheManager(num_blocks, 16, caching, 8192), pp_lanes=lanes)
    rep = Replica(0, sched, coster or StepCoster(constant_profile(stage_s), 16, "auto", 1), False,
                  check_invariants=check)
    rep.pipeline = PipelineClock((1.0,) * stages, send_s_per_token, overhead_s)
    rec = Recorder(len(table))
    end = simulate(table, [rep], Router("round-robin", 1, 16, 1 << 20).route, rec, quiet_stretches=quiet)
    return rec, end, rep


def test_one_request_pays_a_full_traversal_per_token():
    # p = 3 stages of 10 ms, 1 ms per token to send activations between stages.
    # prefill of 32 tokens: 3 x 10 ms + 2 sends x 32 tokens x 1 ms = 94 ms -> first token 1.094;
    # each decode: 30 ms + 2 x 1 ms = 32 ms -> 4 more tokens: 1.094 + 0.128 = 1.222
    table = RequestTable(np.array([1.0]), np.array([32]), np.array([5]))
    rec, end, rep = run_pipeline(table, stages=3, stage_s=0.01, send_s_per_token=0.001)
    assert rec.first_token_s[0] == pytest.approx(1.094)
    assert rec.finish_s[0] == pytest.approx(1.222)
    vals, w = rec.itl_samples()
    assert w.sum() == 4 and np.allclose(vals, 0.032)
    # one batch at a time.  Busy: stages 0 and 1 do 5 x 10 ms + sends of 32 + 4 x 1 tokens
    # = 86 ms each, stage 2 (no send) 50 ms: 222 ms of 3 x 222 ms -> the bubble is 2/3
    assert rep.pipeline.busy_s == pytest.approx([0.086, 0.086, 0.05])
    assert rep.pipeline.bubble_frac() == pytest.approx(2 / 3)


def test_batch_size_one_gains_nothing_over_one_gpu_doing_all_stages():
    # same request on p = 4 stages of 5 ms and on one stage of 20 ms: same token times
    table = RequestTable(np.array([0.0, 0.3]), np.array([100, 50]), np.array([6, 3]))
    rec_pp, _, _ = run_pipeline(table, stages=4, stage_s=0.005)
    rec_1, _, _ = run_pipeline(table, stages=1, stage_s=0.02)
    assert np.allclose(rec_pp.first_token_s, rec_1.first_token_s)
    assert np.allclose(rec_pp.finish_s, rec_1.finish_s)


def test_cpu_overhead_is_paid_per_batch_before_stage_0():
    # p = 2 stages of 10 ms, 2 ms of CPU per batch: prefill done at 2 + 20 = 22 ms, each decode
    # (scheduled when the previous token is back) 22 ms more -> finish at 3 x 22 = 66 ms
    table = RequestTable(np.array([0.0]), np.array([16]), np.array([3]))
    rec, end, _ = run_pipeline(table, stages=2, stage_s=0.01, overhead_s=0.002)
    assert rec.first_token_s[0] == pytest.approx(0.022)
    assert end == pytest.approx(0.066)


def test_many_requests_fill_the_pipeline():
    # p = 4 stages of s = 10 ms, 4 x 64 one-token prompts at t = 0, a budget of 64 tokens a batch,
    # K = 20 tokens each.  Batches 0-3 admit 64 requests each (lanes 0-3); batch k >= 4 holds
    # lane k mod 4, scheduled when batch k - 4 is back at (k - 4 + 4) s = k s, exactly when stage
    # 0 frees: batch k enters at k s and is back at (k + 4) s.  The last batch is 4 (K - 1) + 3,
    # so the run ends at (4K + 3) s = 0.83 s; each request's tokens are 4 s = 40 ms apart.
    s, k_tokens, lane = 0.01, 20, 64
    n = 4 * lane
    table = RequestTable(np.zeros(n), np.ones(n, dtype=np.int64), np.full(n, k_tokens))
    rec, end, rep = run_pipeline(table, stages=4, stage_s=s, budget=lane)
    assert end == pytest.approx((4 * k_tokens + 3) * s)
    assert np.allclose(rec.first_token_s[:lane], 4 * s) and np.allclose(rec.first_token_s[-lane:], 7 * s)
    vals, _ = rec.itl_samples()
    assert np.allclose(vals, 4 * s)
    # throughput -> p / (p s) x batch: 4 x 64 x 20 tokens in (4K + 3) s vs one batch per 4 s on
    # one GPU doing all 4 stages (the same requests take 4 x 20 x 4 s = 3.2 s there)
    tput = n * k_tokens / end
    assert tput == pytest.approx(lane / s * 4 * k_tokens / (4 * k_tokens + 3))
    # bubble: each stage busy 4K s out of (4K + 3) s: the fill and the drain
    assert rep.pipeline.bubble_frac() == pytest.approx(3 / (4 * k_tokens + 3))
    _, end_1, _ = run_pipeline(table, stages=1, stage_s=4 * s, budget=lane)
    assert end_1 == pytest.approx(4 * k_tokens * 4 * s)


def test_pipeline_loop_with_one_stage_equals_the_sync_engine(rng):
    # the same Poisson load through the pipeline loop with p = 1 and through serve_replica (sync)
    m = 300
    t = np.cumsum(rng.exponential(0.05, m))
    table = RequestTable(t, rng.integers(1, 600, m), rng.integers(1, 80, m))
    rec_pp, end_pp, _ = run_pipeline(table, stages=1, stage_s=0.01, budget=512)
    lim = SchedulerLimits(max_num_seqs=4096, max_num_batched_tokens=512, max_model_len=8192)
    rep = Replica(0, SchedulerV1(lim, KVCacheManager(100_000, 16, False, 8192)),
                  StepCoster(constant_profile(0.01), 16, "auto", 1), False)
    rec = Recorder(m)
    end = simulate(table, [rep], Router("round-robin", 1, 16, 1 << 20).route, rec)
    assert end_pp == pytest.approx(end, abs=1e-9)
    assert np.allclose(rec_pp.first_token_s, rec.first_token_s, atol=1e-9)
    assert np.allclose(rec_pp.finish_s, rec.finish_s, atol=1e-9)


# ------------------------------------------------------------------ scenario level
SCENARIO = "scenarios/llama3-70b-pp.yaml"


def test_config_validation_is_one_line():
    with pytest.raises(ScenarioError, match="pipeline_parallel_size.*80 layers"):
        load_scenario(SCENARIO, ["engine.pipeline_parallel_size=81"])
    with pytest.raises(ScenarioError, match="async_scheduling"):
        load_scenario(SCENARIO, ["engine.async_scheduling=true"])
    with pytest.raises(ScenarioError, match="vllm-v1"):
        load_scenario(SCENARIO, ["engine.scheduler=vllm-v0"])
    with pytest.raises(ScenarioError, match="pipeline_parallel_size"):
        load_scenario(SCENARIO, ["engine.pipeline_parallel_size=0"])


def test_pipeline_with_spec_decode_or_moe_is_refused_in_one_line():
    with pytest.raises(ScenarioError, match="speculative decoding"):
        load_scenario(SCENARIO, ["engine.speculative_config.method=ngram",
                                 "engine.speculative_config.num_speculative_tokens=2",
                                 "engine.speculative_config.acceptance_rate=0.5"])
    with pytest.raises(ScenarioError, match="mixtral-8x7b has experts"):
        load_scenario("scenarios/moe-mixtral-8x7b-2xh100.yaml", ["engine.pipeline_parallel_size=2"])


def test_deployment_prices_tp_times_pp_gpus_and_turns_async_off():
    sc = load_scenario(SCENARIO)                  # TP4 x PP2
    dep = build_deployment(sc)
    assert dep.price_per_hour_usd == pytest.approx(8 * 3.50)
    assert not dep.async_scheduling
    assert [s.layers for s in dep.stages] == [40, 40]
    base = build_deployment(load_scenario(SCENARIO, ["engine.pipeline_parallel_size=1"]))
    assert base.stages == () and base.async_scheduling
    assert base.price_per_hour_usd == pytest.approx(4 * 3.50)


@pytest.mark.parametrize("name", ["llama-3-8b", "llama-3-70b", "qwen2.5-7b", "opt-13b"])
def test_one_stage_holds_exactly_the_whole_model(name):
    from sim.pipeline import stage_weight_bytes
    model = PRESETS[name]
    assert stage_weight_bytes(model, 1, model.num_layers, True, True) == model.weight_bytes(1)
    # with 2 stages, the halves add up to the whole plus the tied head's second copy and the rotary
    # cache each stage keeps
    halves = sum(stage_weight_bytes(model, 1, n, i == 0, i == 1) for i, n in enumerate(stage_layers(model.num_layers, 2)))
    extra = (model.vocab_per_rank(1) * model.embed_dim * model.activation_bytes if model.tie_word_embeddings else 0)
    rotary = model.max_model_len * model.head_size * model.activation_bytes if model.gated_mlp else 0
    assert halves == model.weight_bytes(1) + extra + rotary


def roofline_coster() -> StepCoster:
    from sim.roofline import roofline_profile
    model = PRESETS["llama-3-8b"]
    return StepCoster(roofline_profile(model, find_preset("H100-SXM"), 1, "auto"), 16, "auto",
                      model.kv_bytes_per_token() * 16)


@pytest.mark.parametrize(("stages", "budget", "num_blocks", "caching", "max_num_seqs"), [
    (2, 2048, 100_000, False, 4096),     # plenty of everything
    (4, 256, 100_000, True, 4096),       # budget-bound: the literal path splits cohorts
    (3, 1024, 700, False, 4096),         # KV-bound: preemptions of requests in flight
    (2, 512, 900, True, 24),             # seq-bound, prefix caching, preemption
])
def test_lanes_equal_the_literal_pipeline(stages, budget, num_blocks, caching, max_num_seqs):
    # cohort decode sets (Lane) against every request explicit: the same schedule, token by token
    rng = np.random.default_rng(stages * 1000 + budget)
    m = 250
    t = np.cumsum(rng.exponential(0.01, m))
    segs = [((int(rng.integers(0, 4)), 64),) for _ in range(m)] if caching else None
    table = RequestTable(t, rng.integers(65, 900, m), rng.integers(1, 200, m), segments=segs)
    runs = [run_pipeline(table, stages=stages, stage_s=0.0, budget=budget, num_blocks=num_blocks, caching=caching,
                         max_num_seqs=max_num_seqs, lanes=lanes, coster=roofline_coster(), overhead_s=0.0015,
                         send_s_per_token=2e-8, check=True)
            for lanes in (True, False)]
    (rec_l, end_l, rep_l), (rec_x, end_x, rep_x) = runs
    assert end_l == pytest.approx(end_x, rel=1e-12)
    assert np.allclose(rec_l.first_token_s, rec_x.first_token_s, rtol=0, atol=1e-9)
    assert np.allclose(rec_l.finish_s, rec_x.finish_s, rtol=0, atol=1e-9)
    assert rep_l.scheduler.num_preemptions == rep_x.scheduler.num_preemptions
    v_l, w_l = rec_l.itl_samples()
    v_x, w_x = rec_x.itl_samples()
    assert w_l.sum() == w_x.sum()
    assert np.isclose(np.dot(v_l, w_l), np.dot(v_x, w_x), rtol=1e-9)
    if num_blocks < 1000:
        assert rep_x.scheduler.num_preemptions > 0          # the case really preempts


def test_lanes_equal_the_literal_pipeline_under_priority_preemption():
    # priority policy: the victim is the worst (priority, arrival) running request, often a member
    # of a lane in flight; 3 priority classes, KV for ~1/3 of the load
    rng = np.random.default_rng(7)
    m = 200
    t = np.cumsum(rng.exponential(0.01, m))
    table = RequestTable(t, rng.integers(65, 700, m), rng.integers(1, 150, m),
                         extra={"priority": rng.integers(0, 3, m)})
    runs = [run_pipeline(table, stages=3, stage_s=0.0, budget=1024, num_blocks=600, lanes=lanes,
                         coster=roofline_coster(), overhead_s=0.0015, check=True, policy="priority")
            for lanes in (True, False)]
    (rec_l, end_l, rep_l), (rec_x, end_x, rep_x) = runs
    assert rep_x.scheduler.num_preemptions > 0
    assert rep_l.scheduler.num_preemptions == rep_x.scheduler.num_preemptions
    assert end_l == pytest.approx(end_x, rel=1e-12)
    assert np.allclose(rec_l.finish_s, rec_x.finish_s, rtol=0, atol=1e-9)
    assert rec_l.itl_samples()[1].sum() == rec_x.itl_samples()[1].sum()


@pytest.mark.parametrize(("stages", "budget", "num_blocks", "caching", "max_num_seqs", "rate"), [
    (2, 2048, 100_000, False, 4096, 40.0),    # plenty of everything: long decode-only rounds
    (3, 1024, 100_000, True, 4096, 80.0),     # three lanes, prefix caching
    (4, 256, 100_000, False, 4096, 80.0),     # budget-bound: cohorts split by the literal path
    (2, 1024, 700, True, 4096, 80.0),         # KV-bound: preemptions, block allocation order
    (2, 512, 2000, False, 24, 200.0),         # seq-bound: a waiting queue behind full lanes
])
def test_quiet_rounds_equal_step_by_step(stages, budget, num_blocks, caching, max_num_seqs, rate, monkeypatch):
    # decode-only rounds of the batch queue taken as one event (sim.quiet.pipeline_stretch) against
    # every batch its own event: the same numbers, bit for bit (times, tokens, KV and stage clocks);
    # stretches may end with an application that finishes members (applied for real at the end)
    from sim.engine import pipeline_loop
    real = pipeline_loop.PipeLoop
    loops = []                                  # each run's batch-queue loop, for its stretch counters

    def kept(*a):
        loops.append(real(*a))
        return loops[-1]
    monkeypatch.setattr(pipeline_loop, "PipeLoop", kept)
    rng = np.random.default_rng(stages * 7 + num_blocks)
    m = 300
    t = np.cumsum(rng.exponential(1 / rate, m))
    segs = [((int(rng.integers(0, 4)), 64),) for _ in range(m)] if caching else None
    table = RequestTable(t, rng.integers(65, 900, m), rng.integers(1, 300, m), segments=segs)
    runs = [run_pipeline(table, stages=stages, stage_s=0.0, budget=budget, num_blocks=num_blocks, caching=caching,
                         max_num_seqs=max_num_seqs, coster=roofline_coster(), overhead_s=0.0015,
                         send_s_per_token=2e-8, quiet=quiet)
            for quiet in (True, False)]
    (rec_q, end_q, rep_q), (rec_s, end_s, rep_s) = runs
    assert end_q == end_s
    for name in ("first_token_s", "finish_s", "first_scheduled_s", "output_tokens", "preemptions",
                 "prefix_hit_tokens"):
        assert np.array_equal(getattr(rec_q, name), getattr(rec_s, name), equal_nan=name.endswith("_s")), name
    assert rec_q.itl_gaps == rec_s.itl_gaps
    (vq, wq), (vs, ws) = rec_q.itl_samples(), rec_s.itl_samples()   # the uniform gaps, in step order
    assert np.array_equal(vq, vs) and np.array_equal(wq, ws)
    assert (rec_q.num_steps, rec_q.busy_s, rec_q.kv_weighted, rec_q.kv_usage_max, rec_q.running_weighted) == \
           (rec_s.num_steps, rec_s.busy_s, rec_s.kv_weighted, rec_s.kv_usage_max, rec_s.running_weighted)
    assert rec_q.steps == rec_s.steps                       # the step table, row for row
    pq, ps = rep_q.pipeline, rep_s.pipeline
    assert (pq.free_s, pq.busy_s, pq.first_s, pq.last_s) == (ps.free_s, ps.busy_s, ps.first_s, ps.last_s)
    assert rep_q.scheduler.num_preemptions == rep_s.scheduler.num_preemptions
    if num_blocks < 1000:
        assert rep_s.scheduler.num_preemptions > 0          # the case really preempts
    quiet_loop, step_loop = loops
    assert step_loop.num_stretches == 0
    assert quiet_loop.num_stretch_rows > rec_s.num_steps // 20   # many batches were taken in stretches
    assert quiet_loop.num_finishing_stretches > 0            # some of them end with a finish


def test_report_section_only_with_pipeline_parallelism(tmp_path):
    from reports.build import build_sections
    from reports.data import load
    from sim.results import write_results
    from sim.runner import run_scenario
    titles = {}
    for pp in (1, 2):
        sc = load_scenario(SCENARIO, [f"engine.pipeline_parallel_size={pp}", "run.num_requests=60"])
        res = run_scenario(sc)
        if pp == 2:
            s = res.summary
            assert s["pipeline_parallel_size"] == 2 and s["pp_stage_layers"] == [40, 40]
            assert 0.0 <= s["pp_bubble_frac"] < 1.0
            assert s["num_gpu_blocks"] == min(s["pp_stage_kv_blocks"])
        out = tmp_path / f"pp{pp}"
        write_results(out, res.summary, res.requests, res.steps, sc.raw)
        titles[pp] = [sec.title for sec in build_sections(load(out))]
    assert "Pipeline parallelism" in titles[2] and "Pipeline parallelism" not in titles[1]
