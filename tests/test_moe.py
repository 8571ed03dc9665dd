"""Mixture-of-experts models: expert counting, MLA KV bytes, resident weights, HF configs, EP.

Every expected number is worked out by hand in the comments (or enumerated independently)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from pathlib import Path

import pytest

from sim.config import load_scenario
from sim.errors import ScenarioError
from sim.hardware import PRESETS as GPUS
from sim.memory import GIB, activation_peak_bytes, compute_kv_capacity
from sim.model_catalog import PRESETS, from_hf_config
from sim.models import ModelSpec
from sim.moe import (
    busiest_rank_experts,
    busiest_rank_pairs,
    expected_distinct_experts,
    expected_max_std_normal,
    expert_knee_tokens,
)
from sim.roofline import BW_EFF, GEMM_EFF, roofline_profile
from sim.schema import Ctx

ROOT = Path(__file__).resolve().parents[1]
DSV3, MIXTRAL, QWEN3 = PRESETS["deepseek-v3"], PRESETS["mixtral-8x7b"], PRESETS["qwen3-30b-a3b"]
H200, H100 = GPUS["H200"], GPUS["H100-SXM"]


# ---------------------------------------------------------------- distinct experts
def test_distinct_experts_limits():
    assert expected_distinct_experts(1, 256, 8) == pytest.approx(8)        # one token reads its k experts
    assert expected_distinct_experts(100_000, 256, 8) == pytest.approx(256)  # a huge batch reads them all
    assert expected_distinct_experts(0, 256, 8) == 0.0
    # few tokens barely overlap: 2 tokens x 8 of 256 -> 16 - 8*8/256 = 15.75 (second token's
    # experts each already taken with probability 8/256)
    assert expected_distinct_experts(2, 256, 8) == pytest.approx(16 - 64 / 256)


def test_distinct_experts_small_case_by_enumeration():
    # E=4, k=2, T=2 by hand: the second token's pair equals the first's (1 of 6: 2 experts),
    # shares one (4 of 6: 3) or is disjoint (1 of 6: 4) -> (2 + 12 + 4) / 6 = 3 = 4(1 - (1/2)^2)
    assert expected_distinct_experts(2, 4, 2) == pytest.approx(3.0)
    # and E=8, k=2, T=3 enumerated over all 28^3 routings
    pairs = list(itertools.combinations(range(8), 2))
    total = sum(len(set(a) | set(b) | set(c)) for a, b, c in itertools.product(pairs, repeat=3))
    assert expected_distinct_experts(3, 8, 2) == pytest.approx(total / len(pairs) ** 3)


def test_busiest_rank():
    assert expected_max_std_normal(1) == 0.0
    assert expected_max_std_normal(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)   # closed form
    assert expected_max_std_normal(8) == pytest.approx(1.4236, abs=1e-3)                  # tables
    # one rank holds every expert: the mean; a huge batch: every local expert (capped)
    assert busiest_rank_experts(3, 64, 4, 1) == pytest.approx(expected_distinct_experts(3, 64, 4))
    assert busiest_rank_experts(10_000, 256, 8, 8) == 32.0
    # T=1, k=8 on 8 ranks of 32: mean 1 expert a rank, the busiest more, never more than 8
    assert 2.0 < busiest_rank_experts(1, 256, 8, 8) < 8.0
    assert busiest_rank_pairs(1, 8, 1) == 8
    assert busiest_rank_pairs(1e6, 8, 8) == pytest.approx(1e6, rel=0.01)       # balanced when large


# ---------------------------------------------------------------- MLA KV cache
def test_mla_kv_bytes_per_token_is_the_latent_on_every_rank():
    # (kv_lora_rank 512 + rope 64) x 61 layers x 1 byte (fp8), one latent head, not divided by TP
    assert DSV3.kv_bytes_per_token("fp8", 1) == (512 + 64) * 61 == 35_136
    assert DSV3.kv_bytes_per_token("fp8", 8) == 35_136
    assert DSV3.kv_bytes_per_token("auto", 8) == 2 * 35_136          # fp8 checkpoint computes in bf16
    # what ordinary K/V of 16 heads per rank (192-wide K, 128-wide V) would cost: 8.9x
    assert 61 * 16 * (192 + 128) / 35_136 == pytest.approx(8.89, abs=0.01)


def test_deepseek_v3_blocks_on_8xh200_hand_worked():
    # Weights per GPU at TP 8, fp8 linear layers (1 B), bf16 rest:
    #  attention per layer: q_a 7168x1536 = 11,010,048 (replicated) + q_b 1536x(16x192) = 4,718,592
    #   + kv_a 7168x576 = 4,128,768 (replicated) + kv_b 512x(16x256) = 2,097,152 + o 2048x7168 = 14,680,064
    #   = 36,634,624; x 61 layers = 2,234,712,064
    #  3 dense MLPs 3x7168x2304 = 49,545,216 each -> 148,635,648
    #  58 MoE layers: shared 3x7168x256 = 5,505,024 + 256 experts x 5,505,024 = 1,409,286,144
    #   -> 58 x 1,414,791,168 = 82,057,887,744
    #  fp8 total 84,441,235,456 B
    #  bf16: norms 61 x (2x7168 + 1536 + 512) = 999,424; routers 58 x 7168x256 = 106,430,464;
    #   embedding + LM head 2 x 16,160 x 7168 = 231,669,760; final norm 7,168 -> 339,106,816 x 2 B
    #   = 678,213,632 B;  rotary cache 163,840 x 64 x 2 B = 20,971,520
    weights = 84_441_235_456 + 678_213_632 + 20_971_520
    assert DSV3.weight_bytes(8) == weights == 85_140_420_608                    # 79.29 GiB
    # activation peak: the sampler (1024 rows x (129,280 x 14 + 16,160 x 2) + 8192 x 7168 x 2 B)
    # beats the forward (8192 x (2x7168 + 8x(3x256 + 7168) + 7168) x 2 B = 1,392,508,928)
    act = 1024 * (129_280 * 14 + 16_160 * 2) + 8192 * 7168 * 2
    requested = math.ceil(int(139.81 * GIB) * 0.9)
    available = requested - weights - act - GIB                                 # 1 GiB non-torch + NCCL + graphs
    cap = compute_kv_capacity(DSV3, H200, block_size=16, kv_cache_dtype="fp8", gpu_memory_utilization=0.9,
                              swap_space_gib=0, tensor_parallel_size=8, max_num_batched_tokens=8192,
                              max_num_seqs=1024, max_model_len=32768)
    assert cap.block_bytes == 16 * 35_136 == 562_176
    assert cap.activation_peak_bytes == act
    assert cap.num_gpu_blocks == available // 562_176 == 83_407


# ---------------------------------------------------------------- parameters and memory
@pytest.mark.parametrize("model,total_b,active_b", [(MIXTRAL, 46.7, 12.9), (QWEN3, 30.5, 3.3), (DSV3, 671, 37)])
def test_parameter_totals_match_published(model: ModelSpec, total_b: float, active_b: float):
    assert model.num_params / 1e9 == pytest.approx(total_b, rel=0.02)
    assert model.num_active_params / 1e9 == pytest.approx(active_b, rel=0.02)


def test_mixtral_active_parameters_hand_worked():
    # per layer: attention 4096x(4096+2x1024) + 4096x4096 = 41,943,040; one expert 3x4096x14336 =
    # 176,160,768; router 4096x8; norms 2x4096.  Active: 32 x (41,943,040 + 2 x 176,160,768 + 32,768 +
    # 8,192) + embedding and head 2 x 32,000 x 4096 + final norm 4096
    layer = 41_943_040 + 2 * 176_160_768 + 32_768 + 8_192
    assert MIXTRAL.num_active_params == 32 * layer + 2 * 32_000 * 4096 + 4096
    assert MIXTRAL.num_params == MIXTRAL.num_active_params + 32 * 6 * 176_160_768


def test_moe_activation_peak():
    # Mixtral TP 2, one sequence of 8192 tokens: the forward dominates; no dense layer, so the MoE
    # layer's live tensors: residual + input (2 x 4096) + fused_moe's k=2 pairs x (gate/up 2 x 7168 +
    # act 7168 + down output 4096) + the all-reduce output (4096), bf16
    layer = 2 * 4096 + 2 * (3 * 7168 + 4096) + 4096
    assert activation_peak_bytes(MIXTRAL, 2, 8192, 1) == 8192 * layer * 2
    # with EP every GPU computes whole experts: N = 14336
    layer_ep = 2 * 4096 + 2 * (3 * 14336 + 4096) + 4096
    assert activation_peak_bytes(MIXTRAL, 2, 8192, 1, expert_parallel=True) == 8192 * layer_ep * 2


def test_expert_parallel_memory():
    # 256 experts over 8 GPUs: 32 whole experts = 256 eighths -> the same bytes
    assert DSV3.weight_bytes(8, expert_parallel=True) == DSV3.weight_bytes(8)
    # 6 experts over 4 GPUs: vLLM gives ranks 2, 2, 1, 1 whole experts; the fullest holds 2 against
    # 6 quarters = 1.5 experts without EP -> half an expert more per layer
    m = replace(MIXTRAL, num_experts=6)
    extra = m.weight_bytes(4, expert_parallel=True) - m.weight_bytes(4)
    assert extra == 32 * 3 * 4096 * 14336 * 2 // 2


def test_dense_model_is_unchanged():
    # a dense model's table keeps the power-of-two grid plus its own knee, no MoE points
    llama = PRESETS["llama-3-8b"]
    assert not llama.is_moe and llama.num_active_params == llama.num_params and llama.num_moe_layers == 0
    p = roofline_profile(llama, H100, 1, "auto")
    bw = H100.hbm_bandwidth_bytes_per_s * BW_EFF
    knee = int(llama.linear_weight_bytes(1) / bw * H100.bf16_flops * GEMM_EFF / llama.linear_flops_per_token(1))
    assert p.linear_tokens == tuple(float(t) for t in sorted({1, knee, knee + 1} | {2 ** i for i in range(3, 17)}))
    assert "expert_parallel" not in p.provenance


# ---------------------------------------------------------------- HF config.json
MIXTRAL_CFG = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096,
               "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
               "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
               "vocab_size": 32000, "max_position_embeddings": 32768, "torch_dtype": "bfloat16",
               "tie_word_embeddings": False}
QWEN3_CFG = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
             "intermediate_size": 6144, "moe_intermediate_size": 768, "num_attention_heads": 32,
             "num_key_value_heads": 4, "head_dim": 128, "num_hidden_layers": 48, "num_experts": 128,
             "num_experts_per_tok": 8, "decoder_sparse_step": 1, "mlp_only_layers": [], "vocab_size": 151936,
             "max_position_embeddings": 40960, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
DSV3_CFG = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
            "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_attention_heads": 128,
            "num_key_value_heads": 128, "num_hidden_layers": 61, "n_routed_experts": 256, "n_shared_experts": 1,
            "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "kv_lora_rank": 512,
            "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "vocab_size": 129280, "max_position_embeddings": 163840, "torch_dtype": "bfloat16",
            "tie_word_embeddings": False,
            "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}


@pytest.mark.parametrize("cfg,preset", [(MIXTRAL_CFG, MIXTRAL), (QWEN3_CFG, QWEN3), (DSV3_CFG, DSV3)])
def test_hf_config_gives_the_preset(cfg: dict, preset: ModelSpec):
    m = from_hf_config(cfg, preset.name, Ctx("config.json"))
    # Mixtral's config.json has no head_dim (hidden / heads = 128 is what the preset spells out)
    assert replace(m, head_dim=m.head_size) == replace(preset, head_dim=preset.head_size)
    assert m.weight_bytes(8) == preset.weight_bytes(8) and m.kv_bytes_per_token("auto", 8) == preset.kv_bytes_per_token("auto", 8)


def test_hf_dense_layer_rules():
    # Qwen3-MoE: layer i is MoE unless listed in mlp_only_layers and when (i+1) % step == 0:
    # 48 layers, step 2 -> odd i are MoE (24), minus layer 1 listed -> 23 MoE, 25 dense
    m = from_hf_config({**QWEN3_CFG, "decoder_sparse_step": 2, "mlp_only_layers": [1, 2]}, "q", Ctx("c.json"))
    assert m.num_dense_layers == 25 and m.num_moe_layers == 23
    # DeepSeek: MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0: 61 layers, first 3
    # dense, freq 2 -> even i in 4..60 -> 29 MoE
    d = from_hf_config({**DSV3_CFG, "moe_layer_freq": 2}, "d", Ctx("c.json"))
    assert d.num_moe_layers == 29 and d.num_dense_layers == 32


@pytest.mark.parametrize("cfg,change,key", [
    (MIXTRAL_CFG, {"num_experts_per_tok": 9}, "num_experts_per_tok"),
    (MIXTRAL_CFG, {"num_local_experts": None}, "num_local_experts"),
    (QWEN3_CFG, {"decoder_sparse_step": 0}, "decoder_sparse_step"),
    (DSV3_CFG, {"first_k_dense_replace": 61}, "num_dense_layers"),
    (DSV3_CFG, {"kv_lora_rank": "512"}, "kv_lora_rank"),
])
def test_bad_configs_are_refused_in_one_line(cfg: dict, change: dict, key: str):
    with pytest.raises(ScenarioError) as e:
        from_hf_config({**cfg, **change}, "m", Ctx("config.json"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config.json: ") and key in msg


def test_mla_fields_without_latent_refused():
    with pytest.raises(ScenarioError, match="kv_lora_rank"):
        replace(PRESETS["llama-3-8b"], qk_rope_head_dim=64).validate(Ctx("s.yaml", "model"))
    with pytest.raises(ScenarioError, match="num_experts"):
        replace(PRESETS["llama-3-8b"], num_experts_per_tok=2).validate(Ctx("s.yaml", "model"))


# ---------------------------------------------------------------- step cost
def test_single_token_reads_k_experts_per_layer():
    # Mixtral at TP 2 on H100, one token: weight-bound; dense part reads every token's weights,
    # each of 32 layers reads k=2 half-experts (3 x 4096 x 7168 x 2 B each)
    p = roofline_profile(MIXTRAL, H100, 2, "auto")
    bw = H100.hbm_bandwidth_bytes_per_s * BW_EFF
    expert_bytes = 3 * 4096 * 7168 * 2
    expected = MIXTRAL.linear_weight_bytes(2) / bw + 32 * 2 * expert_bytes / bw
    assert p.linear_s(1) == pytest.approx(expected, rel=1e-12)
    # 64 tokens touch all 8 experts (8(1-(3/4)^64) = 8.0000): every expert read once, still weight-bound
    assert p.linear_s(64) == pytest.approx(MIXTRAL.linear_weight_bytes(2) / bw + 32 * 8 * expert_bytes / bw,
                                           rel=1e-6)


def test_linear_table_follows_the_expert_curve():
    # interpolation between grid points stays within 3 % of the curve it samples
    from sim.moe import expert_layer_seconds
    p = roofline_profile(DSV3, H200, 8, "fp8")
    flops = H200.fp8_flops * GEMM_EFF
    bw = H200.hbm_bandwidth_bytes_per_s * BW_EFF
    dense_fpt, dense_b = DSV3.linear_flops_per_token(8), DSV3.linear_weight_bytes(8)
    for t in (5, 7, 10, 20, 40, 100, 300, 700, 3000):
        exact = max(dense_fpt * t / flops, dense_b / bw) + 58 * expert_layer_seconds(
            t, num_experts=256, top_k=8, ep=1, flops_per_pair=DSV3.expert_flops_per_pair(8),
            bytes_per_expert=DSV3.expert_weight_bytes(8), flops_per_s=flops, bytes_per_s=bw)
        assert p.linear_s(t) == pytest.approx(exact, rel=0.03), t


def test_expert_knee():
    # the expert GEMMs turn FLOP-bound where T k f / F = D(T) b / B; beyond 256 experts' worth
    knee = expert_knee_tokens(256, 8, 1e6, 1e6, 1e12, 1e9)      # f/F = 1e-6, b/B = 1e-3
    assert 8 * knee * 1e-6 == pytest.approx(expected_distinct_experts(knee, 256, 8) * 1e-3, rel=1e-6)


def test_expert_parallel_costs_more_at_small_batches_only():
    off = roofline_profile(DSV3, H200, 8, "fp8")
    on = roofline_profile(DSV3, H200, 8, "fp8", expert_parallel=True)
    assert on.linear_s(1) > 1.3 * off.linear_s(1)              # the busiest GPU reads ~2.4 experts, not 1
    assert on.linear_s(16384) == pytest.approx(off.linear_s(16384), rel=0.02)
    assert on.allreduce_s_per_token == off.allreduce_s_per_token    # DP=1: vLLM all-reduces as with TP


def test_example_scenario_builds():
    sc = load_scenario(ROOT / "scenarios" / "moe-deepseek-v3-8xh200.yaml")
    assert sc.model.name == "deepseek-v3" and not sc.engine.enable_expert_parallel
    sc_ep = load_scenario(ROOT / "scenarios" / "moe-deepseek-v3-8xh200.yaml", ["engine.enable_expert_parallel=true"])
    assert sc_ep.engine.enable_expert_parallel
    assert load_scenario(ROOT / "scenarios" / "moe-mixtral-8x7b-2xh100.yaml").model == MIXTRAL
    with pytest.raises(ScenarioError, match="enable_expert_parallel"):
        load_scenario(ROOT / "scenarios" / "moe-deepseek-v3-8xh200.yaml", ["engine.enable_expert_parallel=maybe"])


def test_report_section_only_for_moe(tmp_path: Path):
    from reports.charts_moe import moe
    from reports.data import ReportData
    engine = {"tensor_parallel_size": 8, "kv_cache_dtype": "fp8"}
    sec = moe(ReportData(tmp_path, "run", "x", {"model": "deepseek-v3", "hardware": {"gpu": "H200"}, "engine": engine},
                         summary={"num_gpu_blocks": 83_407}))
    assert sec is not None and sec.title == "Mixture of experts"
    assert "35,136" in sec.tables_html[0] and "312,320" in sec.tables_html[0]     # MLA vs ordinary K/V bytes
    assert moe(ReportData(tmp_path, "run", "x", {"model": "llama-3-8b", "engine": engine})) is None
    assert moe(ReportData(tmp_path, "run", "x", {"model": "no-such-model"})) is None
