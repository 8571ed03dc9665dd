"""Model shapes against hand-computed numbers from the published configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.errors import ScenarioError
from sim.model_catalog import PRESETS, load_model
from sim.schema import Ctx

CTX = Ctx("s.yaml", "model")
LLAMA_JSON = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1000,
              "max_position_embeddings": 2048, "torch_dtype": "bfloat16", "tie_word_embeddings": False}
OPT_JSON = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "num_hidden_layers": 2, "hidden_size": 64,
            "num_attention_heads": 4, "ffn_dim": 256, "vocab_size": 100, "max_position_embeddings": 128,
            "word_embed_proj_dim": 64, "torch_dtype": "float16"}


def write(path: Path, cfg: dict) -> str:
    path.write_text(json.dumps(cfg))
    return str(path)


def test_llama3_8b_parameters_and_kv_bytes():
    m = PRESETS["llama-3-8b"]
    # per layer: q,o 4096^2 each + k,v 4096x1024 each + 3 x 4096x14336 + 2 norms; embed + head + final norm
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert m.num_params == 32 * per_layer + 2 * 128256 * 4096 + 4096 == 8_030_261_248
    assert m.num_params == pytest.approx(8.03e9, rel=0.005)
    assert m.kv_bytes_per_token("auto", 1) == 2 * 32 * 8 * 128 * 2 == 131072
    assert m.kv_bytes_per_token("bf16", 1) == 131072
    assert m.kv_bytes_per_token("fp8", 1) == m.kv_bytes_per_token("int8", 1) == 65536
    # bf16 weights + the rotary cos/sin cache (8192 positions x 128)
    assert m.weight_bytes(1) == 2 * 8_030_261_248 + 8192 * 128 * 2


def test_linear_flops_and_bytes_per_token():
    m = PRESETS["llama-3-8b"]
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096
    assert m.linear_flops_per_token(1) == 2 * linear
    assert m.linear_weight_bytes(1) == 2 * linear
    # TP=2: q/o and the MLP halve, K/V (8 heads -> 4 per rank) halve, LM head halves
    assert m.linear_flops_per_token(2) == pytest.approx(m.linear_flops_per_token(1) / 2)


def test_tensor_parallel_shards_heads_and_replicates_kv_heads():
    m = PRESETS["llama-3-70b"]
    assert m.num_params == pytest.approx(70.55e9, rel=0.005)
    assert m.kv_heads_per_rank(4) == 2 and m.kv_heads_per_rank(8) == 1 and m.kv_heads_per_rank(16) == 1
    assert m.kv_bytes_per_token("auto", 4) == 2 * 80 * 2 * 128 * 2
    assert m.kv_bytes_per_token("auto", 16) == m.kv_bytes_per_token("auto", 8)   # replicated, not split
    assert m.weight_bytes(1) / 3.95 > m.weight_bytes(4) > m.weight_bytes(1) / 4    # norms are replicated


def test_other_presets():
    opt = PRESETS["opt-13b"]
    per_layer = 4 * 5120 * 5120 + 2 * 5120 * 20480 + (4 * 5120 + 20480 + 5120) + 4 * 5120   # weights, biases, LNs
    assert opt.num_params == 40 * per_layer + 50272 * 5120 + 2050 * 5120 + 2 * 5120 == 12_853_473_280
    assert opt.kv_bytes_per_token() == 2 * 40 * 40 * 128 * 2
    assert opt.vocab_per_rank(1) == 50304                      # padded to a multiple of 64
    assert PRESETS["qwen2.5-7b"].num_params == pytest.approx(7.62e9, rel=0.005)
    assert PRESETS["qwen2.5-7b"].kv_bytes_per_token() == 2 * 28 * 4 * 128 * 2
    assert PRESETS["mistral-7b"].num_params == pytest.approx(7.24e9, rel=0.005)


def test_presets_by_alias_and_inline_mapping():
    assert load_model("Meta-Llama/Meta-Llama-3-8B", CTX) is PRESETS["llama-3-8b"]
    m = load_model({"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_kv_heads": 2,
                    "intermediate_size": 128, "vocab_size": 256, "max_model_len": 512}, CTX)
    assert (m.head_size, m.kv_bytes_per_token()) == (16, 2 * 2 * 2 * 16 * 2)


def test_hf_config_json_llama_and_opt(tmp_path):
    (tmp_path / "tiny").mkdir()
    write(tmp_path / "tiny" / "config.json", LLAMA_JSON)
    m = load_model(str(tmp_path / "tiny"), CTX)
    assert (m.name, m.num_layers, m.head_size, m.max_model_len) == ("tiny", 2, 64, 2048)
    assert m.kv_bytes_per_token() == 2 * 2 * 2 * 64 * 2
    per_layer = 256 * (256 + 2 * 128) + 256 * 256 + 3 * 256 * 512 + 2 * 256
    assert m.num_params == 2 * per_layer + 2 * 1000 * 256 + 256
    m = load_model(write(tmp_path / "opt.json", OPT_JSON), CTX)
    assert not m.gated_mlp and m.tie_word_embeddings and m.num_kv_heads == 4 and m.dtype == "float16"
    assert m.num_params == 2 * (4 * 64 * 64 + 2 * 64 * 256 + 4 * 64 + 256 + 64 + 4 * 64) + 100 * 64 + 130 * 64 + 2 * 64
    qwen = {**LLAMA_JSON, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "float32"}
    m = load_model(write(tmp_path / "qwen.json", qwen), CTX)
    assert m.has_qkv_bias and m.dtype == "bfloat16"            # vLLM serves fp32 checkpoints in bf16


def test_bad_model_inputs_are_one_line_errors(tmp_path):
    def refused(ref: object, *words: str) -> None:
        with pytest.raises(ScenarioError) as e:
            load_model(ref, CTX)
        msg = str(e.value)
        assert "\n" not in msg, msg
        for w in words:
            assert w in msg, msg

    refused("llama-9", "s.yaml: model", "unknown model")
    refused(write(tmp_path / "c.json", {"architectures": ["LlamaForCausalLM"], "hidden_size": 8}),
            "c.json: num_hidden_layers", "missing in config.json")
    no_ffn = {k: v for k, v in OPT_JSON.items() if k != "ffn_dim"}
    refused(write(tmp_path / "o.json", no_ffn), "o.json: ffn_dim", "missing")
    refused(write(tmp_path / "g.json", {**LLAMA_JSON, "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}),
            "g.json: architectures", "unsupported architecture", "GPT2LMHeadModel")
    refused(write(tmp_path / "d.json", {**LLAMA_JSON, "torch_dtype": "int4"}), "d.json: torch_dtype", "int4")
    (tmp_path / "bad.json").write_text("{not json")
    refused(str(tmp_path / "bad.json"), "cannot read")
    spec = {"name": "x", "num_layers": 2, "hidden_size": 96, "num_attention_heads": 6, "num_kv_heads": 4,
            "intermediate_size": 8, "vocab_size": 8, "max_model_len": 8}
    refused(spec, "s.yaml: model.num_kv_heads", "must divide")
    refused({**spec, "num_kv_heads": 2, "num_layers": 0}, "model.num_layers", "must be > 0")
    refused({**spec, "num_kv_heads": 2, "dtype": "int8"}, "model.dtype")
    refused({**spec, "num_kv_heads": 2, "hidden_size": 100}, "model.hidden_size")
    refused({**spec, "num_kv_heads": 2, "layers": 3}, "model.layers", "unknown key")


def test_tensor_parallel_degree_vllm_refuses():
    ctx = Ctx("s.yaml", "engine.tensor_parallel_size")
    PRESETS["llama-3-8b"].check_tensor_parallel(8, ctx)
    PRESETS["llama-3-70b"].check_tensor_parallel(16, ctx)              # 8 KV heads, each on 2 ranks
    for name, tp in (("llama-3-8b", 3), ("qwen2.5-7b", 8), ("opt-13b", 3)):
        with pytest.raises(ScenarioError, match="engine.tensor_parallel_size"):
            PRESETS[name].check_tensor_parallel(tp, ctx)
