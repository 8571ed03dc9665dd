"""Model shapes against hand-computed numbers from the published configs."""

from __future__ import annotations

import json

import pytest

from sim.errors import ScenarioError
from sim.models import PRESETS, load_model
from sim.schema import Ctx


def test_llama3_8b_parameters_and_kv_bytes():
    m = PRESETS["llama-3-8b"]
    assert m.num_params == pytest.approx(8.03e9, rel=0.005)
    assert m.kv_bytes_per_token("auto", 1) == 2 * 32 * 8 * 128 * 2 == 131072
    assert m.kv_bytes_per_token("fp8", 1) == 65536


def test_tensor_parallel_shards_heads_and_replicates_kv_heads():
    m = PRESETS["llama-3-70b"]
    assert m.num_params == pytest.approx(70.55e9, rel=0.005)
    assert m.kv_heads_per_rank(4) == 2 and m.kv_heads_per_rank(16) == 1
    assert m.weight_bytes(4) < m.weight_bytes(1) / 3.9


def test_other_presets():
    assert PRESETS["opt-13b"].num_params == pytest.approx(12.85e9, rel=0.01)
    assert PRESETS["qwen2.5-7b"].num_params == pytest.approx(7.62e9, rel=0.01)
    assert PRESETS["mistral-7b"].num_params == pytest.approx(7.24e9, rel=0.01)


def test_hf_config_json_llama_and_opt(tmp_path):
    llama = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 512, "vocab_size": 1024, "max_position_embeddings": 2048,
             "torch_dtype": "bfloat16"}
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(llama))
    m = load_model(str(tmp_path / "tiny"), Ctx("s.yaml", "model"))
    assert (m.num_layers, m.head_size, m.kv_bytes_per_token()) == (2, 64, 2 * 2 * 2 * 64 * 2)
    opt = {"architectures": ["OPTForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "ffn_dim": 256, "vocab_size": 100, "max_position_embeddings": 128, "torch_dtype": "float16"}
    (tmp_path / "opt.json").write_text(json.dumps(opt))
    m = load_model(str(tmp_path / "opt.json"), Ctx("s.yaml", "model"))
    assert not m.gated_mlp and m.num_kv_heads == 4 and m.dtype == "float16"


def test_bad_model_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ScenarioError) as e:
        load_model("llama-9", Ctx("s.yaml", "model"))
    assert "\n" not in str(e.value) and "s.yaml: model" in str(e.value)
    (tmp_path / "c.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 8}))
    with pytest.raises(ScenarioError) as e:
        load_model(str(tmp_path / "c.json"), Ctx("s.yaml", "model"))
    assert "missing in config.json" in str(e.value) and "c.json" in str(e.value)
    with pytest.raises(ScenarioError) as e:
        load_model({"name": "x", "num_layers": 2, "hidden_size": 64, "num_attention_heads": 6, "num_kv_heads": 4,
                    "intermediate_size": 8, "vocab_size": 8, "max_model_len": 8}, Ctx("s.yaml", "model"))
    assert "num_kv_heads" in str(e.value)
