"""sim.spec_runtime: the acceptance draws (SpecDecoder) against the closed-form distribution, and
the proposer's share of a step (ProposerCost, proposer_time_s) against hand-worked rooflines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.config import scenario_from_dict
from sim.cost_model import StepCoster
from sim.model_catalog import PRESETS
from sim.spec_decode import SpeculativeConfig
from sim.spec_runtime import ProposerCost, SpecDecoder, proposer_time_s


def test_sampler_mean_and_per_position_rates_match_the_closed_form():
    a, k, n = 0.6, 4, 200_000
    dec = SpecDecoder(SpeculativeConfig(method="eagle", num_speculative_tokens=k, acceptance_rate=a),
                      np.random.default_rng(7))
    draws = np.array([dec.draw(k) for _ in range(n)])
    # exact distribution: P(A = j) = a^j (1 - a) for j < k, P(A = k) = a^k
    p = np.array([a ** j * (1 - a) for j in range(k)] + [a ** k])
    mean = float(np.dot(np.arange(k + 1), p))
    assert mean == pytest.approx(sum(a ** i for i in range(1, k + 1)))
    sd = math.sqrt(float(np.dot((np.arange(k + 1) - mean) ** 2, p)))
    assert abs(draws.mean() - mean) < 4 * sd / math.sqrt(n)
    for i in range(1, k + 1):                      # position i accepted with probability a^i
        frac = float((draws >= i).mean())
        assert abs(frac - a ** i) < 4 * math.sqrt(a ** i * (1 - a ** i) / n)
    # a draft cut to m tokens accepts min(A, m): still a prefix
    assert all(dec.draw(1) <= 1 for _ in range(100))


def test_rate_zero_pays_for_verification_and_the_proposer():
    # the same step with and without k = 3 drafts on 8 decodes of 1000 context tokens each:
    # the linear layers see 8 * (1 + 3) = 32 tokens, attention reads each context once (+3 slots)
    # and the n-gram proposer adds 10 µs per sequence
    from sim.batch import StepBatch
    from sim.hardware import load_hardware
    from sim.roofline import roofline_profile
    from sim.schema import Ctx
    hw = load_hardware("H100-SXM", {}, Ctx(""))
    prof = roofline_profile(PRESETS["llama-3-8b"], hw, 1, "auto")
    plain = StepBatch()
    for _ in range(8):
        plain.add_shape(1, 999)
    pc = ProposerCost(3, cpu_s_per_seq=10e-6)
    verify = StepBatch()
    for _ in range(8):
        verify.add_spec_decode(4, 999)
    verify.num_draft_seqs = 8
    base = StepCoster(prof, 16, "auto", 1).step_time_s(plain)
    on = StepCoster(prof, 16, "auto", 1, proposer=pc).step_time_s(verify)
    a = prof.attention(prof.decode_attention, "auto", 16)
    extra = (prof.linear_s(32) - prof.linear_s(8)) + a.s_per_kv_token * 8 * 3 + 8 * 10e-6
    assert on - base == pytest.approx(extra, rel=1e-9)


def test_eagle_proposer_reads_one_layer_and_the_lm_head_k_times():
    # Llama-3-8B layer: attention 4096·(4096 + 2·8·128) + 4096·4096 = 41,943,040 params,
    # MLP 3·4096·14336 = 176,160,768; LM head 128,256·4096 = 525,336,576; all bf16 (2 bytes):
    # 1,486,880,768 bytes per pass, at 0.8 · 3.35 TB/s ≈ 0.555 ms; k = 3 passes for one sequence
    from sim.deployment import build_deployment
    from sim.spec_decode import proposer_cost
    sc = scenario_from_dict({"model": "llama-3-8b", "engine": {"async_scheduling": False, "speculative_config":
                             {"method": "eagle", "num_speculative_tokens": 3, "acceptance_rate": 0.7}}}, "t.yaml")
    pc = proposer_cost(sc.engine.speculative_config, sc, build_deployment(sc))
    weight_pass_s = 1_486_880_768 / (0.8 * 3350e9)
    assert proposer_time_s(pc, 1, 0) == pytest.approx(3 * weight_pass_s, rel=0.01)
    assert proposer_time_s(pc, 0, 0) == 0.0
