"""Speculative decoding (sim.spec_decode + the v1 scheduler's spec-token path): hand-worked truths."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_request

from sim.config import scenario_from_dict
from sim.cost_model import StepCoster, constant_profile
from sim.engine import simulate
from sim.errors import ScenarioError
from sim.kv_cache_manager import KVCacheManager
from sim.metrics import Recorder
from sim.replica import Replica
from sim.requests_table import RequestTable
from sim.router import Router
from sim.runner import run_scenario
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1
from sim.spec_decode import (
    MeasuredAcceptance,
    SpeculativeConfig,
    expected_accepted_tokens,
    rates_from_counts,
)
from sim.spec_runtime import SpecDecoder


def spec(method: str = "eagle", k: int = 3, **kw) -> SpeculativeConfig:
    return SpeculativeConfig(method=method, num_speculative_tokens=k, **kw)  # type: ignore[arg-type]


def scheduler(decoder: SpecDecoder | None, num_blocks: int = 4000, block_size: int = 16,
              max_num_batched_tokens: int = 16384) -> SchedulerV1:
    kv = KVCacheManager(num_blocks, block_size, False, 8192)
    lim = SchedulerLimits(max_num_seqs=256, max_num_batched_tokens=max_num_batched_tokens, max_model_len=8192)
    return SchedulerV1(lim, kv, spec=decoder)


def run_table(table: RequestTable, step_s: float, decoder: SpecDecoder | None):
    rep = Replica(0, scheduler(decoder), StepCoster(constant_profile(step_s), 16, "auto", 1), False)
    rec = Recorder(len(table))
    end = simulate(table, [rep], Router("round-robin", 1, 16, 1 << 20).route, rec)
    return rec, end


# ---------------------------------------------------------------------------- acceptance model
def test_expected_accepted_length_is_the_truncated_geometric_sum():
    # one rate a: P(position i accepted) = a^i, so E[accepted] = a + a^2 + a^3
    assert expected_accepted_tokens((0.7,) * 3) == pytest.approx(0.7 + 0.49 + 0.343)
    # conditional per-position rates: 0.9, 0.9*0.5, 0.9*0.5*0.2
    assert expected_accepted_tokens((0.9, 0.5, 0.2)) == pytest.approx(0.9 + 0.45 + 0.09)
    assert expected_accepted_tokens((0.0, 1.0)) == 0.0


def test_rates_from_vllm_counters():
    # 1000 drafts; 800 accepted position 1, 400 position 2, 100 position 3
    assert rates_from_counts(1000, [800, 400, 100]) == pytest.approx((0.8, 0.5, 0.25))
    cfg = spec(measured_acceptance=MeasuredAcceptance(1000, [800, 400, 100]))
    assert cfg.rates == pytest.approx((0.8, 0.5, 0.25))


# ---------------------------------------------------------------------------- engine timing
def test_rate_one_emits_k_plus_one_tokens_per_verify_step():
    # prompt 100, N = 10 output tokens, k = 3, every draft accepted, constant 20 ms steps, sync:
    #   step 1 (t 1.00 -> 1.02): prefill, samples token 1 (the first token), drafts 3
    #   step 2 (-> 1.04): verifies 1 + 3, emits tokens 2..5;  step 3 (-> 1.06): tokens 6..9
    #   step 4 (-> 1.08): all 3 drafts accepted again but only token 10 is still needed
    # steps = 1 + ceil((N - 1) / (k + 1)) = 1 + ceil(9 / 4) = 4
    table = RequestTable(np.array([1.0]), np.array([100]), np.array([10]))
    dec = SpecDecoder(spec(k=3, acceptance_rate=1.0), np.random.default_rng(0))
    rec, end = run_table(table, 0.02, dec)
    assert rec.first_token_s[0] == pytest.approx(1.02)
    assert rec.finish_s[0] == pytest.approx(1.08) and end == pytest.approx(1.08)
    assert rec.output_tokens[0] == 10
    vals, w = rec.itl_samples()                    # one gap per streamed chunk (vllm bench serve)
    assert w.sum() == 3 and np.allclose(vals, 0.02)
    # vLLM counts what the rejection sampler accepted, even past max_tokens
    assert (dec.num_drafts, dec.num_draft_tokens, dec.num_accepted_tokens) == (3, 9, 9)
    assert dec.num_accepted_tokens_per_pos == [3, 3, 3]
    assert (dec.num_verify_steps, dec.num_verified_seqs, dec.num_emitted_tokens) == (3, 3, 4 + 4 + 1)


@pytest.mark.parametrize("n_out", [1, 2, 5, 17, 64])
def test_rate_one_step_count_formula(n_out):
    table = RequestTable(np.array([0.0]), np.array([40]), np.array([n_out]))
    dec = SpecDecoder(spec(k=4, acceptance_rate=1.0), np.random.default_rng(0))
    rec, end = run_table(table, 0.01, dec)
    steps = 1 + math.ceil((n_out - 1) / 5)
    assert end == pytest.approx(0.01 * steps)
    assert rec.output_tokens[0] == n_out


def test_rate_zero_gives_exactly_the_baseline_token_timing(rng):
    # every draft rejected: one token per step per sequence, like no speculation; with a constant
    # step time (the verification and proposer cost aside) every timestamp is the baseline's
    n = 300
    t = np.cumsum(rng.exponential(1 / 20.0, n))
    table = RequestTable(t, rng.integers(16, 600, n), rng.integers(1, 80, n))
    base, end0 = run_table(table, 0.015, None)
    dec = SpecDecoder(spec(k=3, acceptance_rate=0.0), np.random.default_rng(1))
    on, end1 = run_table(table, 0.015, dec)
    assert end1 == pytest.approx(end0, abs=1e-9)
    for col in ("first_token_s", "finish_s", "first_scheduled_s"):
        np.testing.assert_allclose(getattr(on, col), getattr(base, col), rtol=0, atol=1e-9)
    assert np.array_equal(on.output_tokens, base.output_tokens)
    assert dec.num_accepted_tokens == 0 and dec.num_draft_tokens == 3 * dec.num_drafts
    # every request drafts after each token but its last: Σ (output - 1) drafts
    assert dec.num_drafts == int((table.output_tokens - 1).sum())


# ---------------------------------------------------------------------------- KV slots
def test_lookahead_slots_and_rollback_keep_blocks():
    # block 16, prompt 30, k = 3, every draft rejected.
    # EAGLE (lookahead 3): prefill needs slots for 30 + 3 = 33 tokens -> 3 blocks (not 2)
    dec = SpecDecoder(spec(k=3, acceptance_rate=0.0), np.random.default_rng(0))
    s = scheduler(dec)
    r = make_request(30, 20, req_id=1)
    s.add_request(r)
    b = s.schedule()
    assert r.nblocks == 3 and b.num_prefill_tokens == 30
    s.update_from_output(b)
    assert (r.num_output, r.num_spec_tokens) == (1, 3)
    # verify step: 1 + 3 tokens from computed 30 -> computed 34, slots 34 + 3 = 37 -> 3 blocks
    b = s.schedule()
    assert (b.num_decode_tokens, b.num_spec_tokens, r.num_computed, r.nblocks) == (1, 3, 34, 3)
    s.update_from_output(b)
    assert (r.num_computed, r.num_output) == (31, 2)          # 3 rejected: rolled back
    # n-gram (no lookahead): prefill 30 -> 2 blocks; verify 31..34 -> a 3rd block, kept after rollback
    dec = SpecDecoder(spec("ngram", k=3, acceptance_rate=0.0), np.random.default_rng(0))
    s = scheduler(dec)
    r = make_request(30, 20, req_id=2)
    s.add_request(r)
    s.update_from_output(s.schedule())
    assert r.nblocks == 2
    s.update_from_output(s.schedule())
    assert (r.num_computed, r.nblocks) == (31, 3)


def test_drafts_cleared_on_preemption_and_kv_invariants_hold():
    # a cache too small for both requests: the later one is preempted and loses its drafts
    dec = SpecDecoder(spec(k=3, acceptance_rate=0.5), np.random.default_rng(3))
    s = scheduler(dec, num_blocks=9)
    a, b = make_request(40, 60, req_id=1), make_request(40, 60, req_id=2)
    s.add_request(a)
    s.add_request(b)
    preempted = 0
    for _ in range(200):
        if not s.has_work:
            break
        batch = s.schedule()
        preempted += len(batch.preempted)
        for r in batch.preempted:
            assert r.num_spec_tokens == 0
        s.update_from_output(batch)
        s.kv.check_invariants(s.running, s.waiting)
    assert not s.has_work and preempted > 0
    assert a.num_output == 60 and b.num_output == 60


@pytest.mark.parametrize("num_blocks,budget,threshold", [(30, 16384, 0), (4000, 96, 0), (36, 128, 40)])
def test_batch_shape_is_the_sum_over_what_was_scheduled(num_blocks, budget, threshold):
    # The spec scheduling pass keeps the shape in running totals; recount it from the recorded
    # schedule with the definitions of StepBatch.add_spec_decode / add_shape: a request with one
    # new token, or whose computed tokens were one short of its sequence (a verify), is a decode
    # of 1 + (d - 1) drafts attending to computed + d; anything else is a prefill chunk.  Under KV
    # pressure (preemption), a tight budget (vLLM's literal running loop) and chunking by the
    # long-prefill threshold, every step obeys the budget and every request completes.
    dec = SpecDecoder(spec(k=3, acceptance_rate=0.6), np.random.default_rng(7))
    kv = KVCacheManager(num_blocks, 16, True, 8192)
    lim = SchedulerLimits(max_num_seqs=256, max_num_batched_tokens=budget, max_model_len=8192,
                          long_prefill_token_threshold=threshold, scheduler_reserve_full_isl=False)
    s = SchedulerV1(lim, kv, record_schedule=True, spec=dec)
    rng = np.random.default_rng(1)
    reqs = [make_request(int(rng.integers(20, 90)), int(rng.integers(5, 40)), req_id=i) for i in range(12)]
    for r in reqs:
        s.add_request(r)
    preempted = 0
    for _ in range(2000):
        if not s.has_work:
            break
        before = {r.req_id: (r.num_computed, r.num_prompt_tokens + r.num_output) for r in reqs}
        b = s.schedule()
        preempted += len(b.preempted)
        # kv_state after a scheduling (schedule_spec's count of the computed tokens when it
        # kept one) and after the update: the KV state of the requests' actual computed tokens
        walked = s.kv.state_fractions(sum(r.num_computed for r in s.running))
        assert s.kv_state() == walked
        n_dec = n_spec = ctx = n_pre = seqs = 0
        pairs = 0.0
        samplers = []
        for r, d in b.scheduled:
            comp, ntok = before[r.req_id]
            if comp == 0 and r.num_computed > d:      # admitted with a prefix-cache hit
                comp = r.num_computed - d
            if d == 1 or comp + 1 == ntok:
                n_dec, n_spec, ctx = n_dec + 1, n_spec + d - 1, ctx + comp + d
            else:
                n_pre, seqs, pairs = n_pre + d, seqs + 1, pairs + d * (comp + (d + 1) / 2)
            assert r.num_computed == comp + d
            if comp + d >= ntok:
                samplers.append((r.req_id, comp + d - ntok))
        assert (b.num_decode_tokens, b.num_spec_tokens, b.decode_ctx_tokens) == (n_dec, n_spec, ctx)
        assert (b.num_prefill_tokens, b.num_prefill_seqs) == (n_pre, seqs)
        assert b.prefill_pairs == pytest.approx(pairs)
        assert b.num_tokens <= budget
        assert sorted(samplers) == sorted((r.req_id, k) for r, k in zip(b.samplers, b.spec_drafts, strict=True))
        s.update_from_output(b)
        assert s.kv_state() == s.kv.state_fractions(sum(r.num_computed for r in s.running))
        s.kv.check_invariants(s.running, s.waiting)
    assert not s.has_work
    assert all(r.num_output == r.max_tokens for r in reqs)
    if num_blocks < 100:
        assert preempted > 0


# ---------------------------------------------------------------------------- scenarios
BASE = {"model": "llama-3-8b", "hardware": {"gpu": "H100-SXM"},
        "workload": {"arrival": {"process": "poisson", "rate": 10},
                     "lengths": {"input": {"dist": "uniform", "low": 64, "high": 512},
                                 "output": {"dist": "uniform", "low": 16, "high": 128}}},
        "run": {"seed": 3, "num_requests": 120}}


def scenario(spec_cfg, **engine):
    raw = {**BASE, "engine": {"async_scheduling": False, **engine}}
    if spec_cfg is not None:
        raw["engine"]["speculative_config"] = spec_cfg
    return scenario_from_dict(raw, "t.yaml")


EAGLE = {"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.7}


def test_same_seed_same_numbers_and_the_seed_matters():
    a = run_scenario(scenario(EAGLE)).summary
    b = run_scenario(scenario(EAGLE)).summary
    assert a["spec_decode_num_accepted_tokens"] == b["spec_decode_num_accepted_tokens"]
    assert a["mean_tpot_ms"] == b["mean_tpot_ms"] and a["duration"] == b["duration"]
    sc = scenario(EAGLE)
    c = run_scenario(scenario_from_dict({**sc.raw, "run": {"seed": 4, "num_requests": 120}}, "t.yaml")).summary
    assert c["spec_decode_num_accepted_tokens"] != a["spec_decode_num_accepted_tokens"]


def test_summary_keys_follow_vllm_definitions():
    s = run_scenario(scenario(EAGLE)).summary
    assert s["spec_decode_acceptance_rate"] == s["spec_decode_num_accepted_tokens"] / s["spec_decode_num_draft_tokens"]
    assert s["spec_decode_mean_acceptance_length"] == pytest.approx(
        1 + s["spec_decode_num_accepted_tokens"] / s["spec_decode_num_drafts"])
    assert sum(s["spec_decode_num_accepted_tokens_per_pos"]) == s["spec_decode_num_accepted_tokens"]
    # ~7,000 drafts: mean acceptance length within a few standard errors of 1 + 0.7 + 0.49 + 0.343
    assert s["spec_decode_mean_acceptance_length"] == pytest.approx(2.533, abs=0.05)
    off = run_scenario(scenario(None)).summary
    assert "spec_decode_num_drafts" not in off
    assert s["total_output_tokens"] == off["total_output_tokens"]
    assert s["mean_tpot_ms"] < off["mean_tpot_ms"]


def test_drafter_memory_shrinks_the_kv_cache():
    from sim.deployment import build_deployment
    off = build_deployment(scenario(None)).capacity
    on = build_deployment(scenario(EAGLE)).capacity
    # the EAGLE layer's KV rides in the same blocks: 33 layers instead of 32
    assert on.block_bytes * 32 == off.block_bytes * 33
    # weights: one decoder layer (218,103,808 params) + the 2h x h fc, bf16
    w = 218_103_808 * 2 + 2 * 4096 * 4096 * 2
    assert on.weight_bytes - off.weight_bytes == w
    assert on.num_gpu_blocks == (off.available_kv_bytes - w) // on.block_bytes


@pytest.mark.parametrize("bad, where", [
    ({"method": "eagle", "num_speculative_tokens": 0, "acceptance_rate": 0.7}, "num_speculative_tokens"),
    ({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 1.5}, "acceptance_rate"),
    ({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": -0.1}, "acceptance_rate"),
    ({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rates_per_pos": [0.8, 0.6]}, "acceptance_rates_per_pos"),
    ({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rates_per_pos": [0.8, 1.2]}, "acceptance_rates_per_pos[1]"),
    ({"method": "medusa2", "num_speculative_tokens": 3, "acceptance_rate": 0.7}, "method"),
    ({"method": "draft_model", "num_speculative_tokens": 3, "acceptance_rate": 0.7, "model": "llama-0.1b"}, "model"),
    ({"method": "draft_model", "num_speculative_tokens": 3, "acceptance_rate": 0.7}, "model"),
    ({"method": "eagle", "num_speculative_tokens": 3}, "speculative_config"),
    ({"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.7, "acceptance_rates_per_pos": [1, 1, 1]},
     "speculative_config"),
    ({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.7, "k": 3}, "k"),
    ({"method": "eagle", "num_speculative_tokens": 2,
      "measured_acceptance": {"num_drafts": 100, "num_accepted_tokens_per_pos": [50, 60]}},
     "measured_acceptance.num_accepted_tokens_per_pos[1]"),
    ({"method": "eagle", "num_speculative_tokens": 3,
      "measured_acceptance": {"num_drafts": 100, "num_accepted_tokens_per_pos": [50, 20]}},
     "measured_acceptance.num_accepted_tokens_per_pos"),
])
def test_bad_config_refused_in_one_line(bad, where):
    with pytest.raises(ScenarioError) as e:
        scenario(bad)
    msg = str(e.value)
    assert "\n" not in msg and "t.yaml" in msg and "engine.speculative_config" in msg and where in msg


def test_measured_acceptance_reproduces_the_counters_it_came_from():
    # counters of a (hypothetical) vLLM run: 10,000 drafts, positions 1..3 accepted 6,000 / 3,000 /
    # 900 times -> conditional rates 0.6, 0.5, 0.3 -> mean acceptance length 1 + 0.6 + 0.3 + 0.09 = 1.99
    m = {"method": "eagle", "num_speculative_tokens": 3,
         "measured_acceptance": {"num_drafts": 10000, "num_accepted_tokens_per_pos": [6000, 3000, 900]}}
    s = run_scenario(scenario(m)).summary
    assert s["spec_decode_mean_acceptance_length"] == pytest.approx(1.99, abs=0.05)
    assert s["spec_decode_per_pos_acceptance_rate"] == pytest.approx([0.6, 0.3, 0.09], abs=0.03)


def test_async_scheduling_with_spec_decode_refused():
    with pytest.raises(ScenarioError, match="async_scheduling"):
        scenario(EAGLE, async_scheduling=True)


def test_report_section_only_when_spec_decoding_is_used(tmp_path):
    from reports.charts_spec import spec_decode
    from reports.data import ReportData
    on = run_scenario(scenario(EAGLE))
    sec = spec_decode(ReportData(tmp_path, "run", "x", {"engine": {"speculative_config": EAGLE}},
                                 summary=on.summary))
    assert sec is not None and sec.title == "Speculative decoding" and len(sec.charts) == 2
    # the acceptance-model line is 0.7^i
    assert list(sec.charts[0].fig.data[1].y) == pytest.approx([0.7, 0.49, 0.343])
    off = run_scenario(scenario(None))
    assert spec_decode(ReportData(tmp_path, "run", "x", {}, summary=off.summary)) is None


def test_rate_zero_step_by_step_costs_the_verification_and_the_proposer():
    # one request alone, n-gram k = 2, every draft rejected: the same steps as without speculation,
    # each decode step longer by linear(3) - linear(1) (3 query tokens instead of 1), two more KV
    # tokens read, and 10 µs of n-gram CPU; the prefill step only by the proposer's 10 µs
    from sim.deployment import build_deployment
    one = {**BASE, "run": {"seed": 0, "num_requests": 1}}
    ng = {"method": "ngram", "num_speculative_tokens": 2, "acceptance_rate": 0.0}
    off = run_scenario(scenario_from_dict({**one, "engine": {"async_scheduling": False}}, "t.yaml"))
    on = run_scenario(scenario_from_dict({**one, "engine": {"async_scheduling": False, "speculative_config": ng}}, "t.yaml"))
    d_off, d_on = off.steps["duration_s"].to_numpy(), on.steps["duration_s"].to_numpy()
    assert len(d_off) == len(d_on) == int(off.workload.output_tokens[0])
    prof = build_deployment(scenario_from_dict(one, "t.yaml")).profile
    a = prof.attention(prof.decode_attention, "auto", 16)
    per_decode = prof.linear_s(3) - prof.linear_s(1) + 2 * a.s_per_kv_token + 10e-6
    assert d_on[0] - d_off[0] == pytest.approx(10e-6, rel=1e-6)
    np.testing.assert_allclose(d_on[1:-1] - d_off[1:-1], per_decode, rtol=1e-6)
    # the last step drafts too (vLLM's proposer runs before it knows the request is done)
    assert d_on[-1] - d_off[-1] == pytest.approx(per_decode, rel=1e-6)
    assert on.summary["completed"] == 1 and on.summary["spec_decode_num_accepted_tokens"] == 0
