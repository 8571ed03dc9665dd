"""Where a model's shapes come from: named presets, Hugging Face `config.json` files, or a mapping.

`load_model(ref, ctx)` is the scenario's `model:` reader; `from_hf_config` maps a Hugging Face config
(Llama, Mistral, Qwen2, OPT, Mixtral, Qwen3-MoE, DeepSeek-V2/V3) onto `sim.models.ModelSpec`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sim.models import ModelSpec
from sim.schema import Ctx, build

PRESETS: dict[str, ModelSpec] = {m.name: m for m in (
    # numbers from each model's Hugging Face config.json
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, head_dim=128),
    ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, head_dim=128),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, head_dim=128, architecture="MistralForCausalLM"),
    ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 32768, head_dim=128, has_qkv_bias=True,
              architecture="Qwen2ForCausalLM"),
    ModelSpec("opt-13b", 40, 5120, 40, 40, 20480, 50272, 2048, head_dim=128, dtype="float16", gated_mlp=False,
              tie_word_embeddings=True, architecture="OPTForCausalLM"),
    # mistralai/Mixtral-8x7B-Instruct-v0.1: 8 experts of 14336, top-2 (46.7B total, 12.9B active)
    ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, head_dim=128, architecture="MixtralForCausalLM",
              num_experts=8, num_experts_per_tok=2, moe_intermediate_size=14336),
    # Qwen/Qwen3-30B-A3B: 128 experts of 768, top-8, every layer MoE (30.5B total, 3.3B active)
    ModelSpec("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960, head_dim=128,
              architecture="Qwen3MoeForCausalLM", num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768),
    # deepseek-ai/DeepSeek-V3 (fp8 block-quantised checkpoint): 256 routed experts of 2048 + 1 shared, top-8,
    # first 3 layers dense; MLA with a 512-wide latent + 64 rope dims (671B total, 37B active; the
    # multi-token-prediction layer vLLM loads only for speculative decoding is not counted)
    ModelSpec("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840, dtype="fp8",
              architecture="DeepseekV3ForCausalLM", num_experts=256, num_experts_per_tok=8,
              moe_intermediate_size=2048, shared_expert_intermediate_size=2048, num_dense_layers=3,
              kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
)}
ALIASES = {"meta-llama/meta-llama-3-8b": "llama-3-8b", "meta-llama/meta-llama-3-70b": "llama-3-70b",
           "llama3-8b": "llama-3-8b", "llama3-70b": "llama-3-70b", "mistralai/mistral-7b-v0.1": "mistral-7b",
           "qwen/qwen2.5-7b": "qwen2.5-7b", "facebook/opt-13b": "opt-13b",
           "mistralai/mixtral-8x7b-instruct-v0.1": "mixtral-8x7b", "mistralai/mixtral-8x7b-v0.1": "mixtral-8x7b",
           "qwen/qwen3-30b-a3b": "qwen3-30b-a3b", "deepseek-ai/deepseek-v3": "deepseek-v3"}
_HF_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "half": "float16",
              "float32": "bfloat16", "float": "bfloat16"}   # vLLM's dtype=auto serves float32 checkpoints in bf16


def _hf_int(cfg: dict[str, Any], ctx: Ctx, name: str, default: int | None = None) -> int:
    value = cfg.get(name)
    if value is None:
        if default is not None:
            return default
        raise ctx.at(name).error("missing in config.json")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ctx.at(name).error("expected an integer", value)
    return value


def _hf_moe_fields(cfg: dict[str, Any], ctx: Ctx, arch: str, model_type: Any, layers: int) -> dict[str, Any]:
    """MoE and MLA fields of a Mixtral, Qwen3-MoE or DeepSeek-V2/V3 config.json (empty for dense models).

    Which layers are MoE follows vLLM's decoder layers: DeepSeek (models/deepseek_v2.py) layer i
    is MoE when i >= first_k_dense_replace and i % moe_layer_freq == 0; Qwen3-MoE
    (models/qwen3_moe.py) when i is not in mlp_only_layers and (i + 1) % decoder_sparse_step == 0.
    """
    out: dict[str, Any] = {}
    if "Mixtral" in arch or model_type == "mixtral":
        out = {"num_experts": _hf_int(cfg, ctx, "num_local_experts"),
               "moe_intermediate_size": _hf_int(cfg, ctx, "intermediate_size")}
    elif "Qwen3Moe" in arch or model_type == "qwen3_moe":
        step = _hf_int(cfg, ctx, "decoder_sparse_step", 1)
        if step < 1:
            raise ctx.at("decoder_sparse_step").error("expected an integer >= 1", step)
        only = cfg.get("mlp_only_layers") or []
        if not isinstance(only, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in only):
            raise ctx.at("mlp_only_layers").error("expected a list of layer indices", only)
        moe = [i for i in range(layers) if i not in only and (i + 1) % step == 0]
        out = {"num_experts": _hf_int(cfg, ctx, "num_experts"),
               "moe_intermediate_size": _hf_int(cfg, ctx, "moe_intermediate_size"),
               "num_dense_layers": layers - len(moe)}
    elif "Deepseek" in arch or model_type in ("deepseek_v2", "deepseek_v3"):
        first, freq = _hf_int(cfg, ctx, "first_k_dense_replace", 0), _hf_int(cfg, ctx, "moe_layer_freq", 1)
        if freq < 1:
            raise ctx.at("moe_layer_freq").error("expected an integer >= 1", freq)
        moe_width = _hf_int(cfg, ctx, "moe_intermediate_size")
        out = {"num_experts": _hf_int(cfg, ctx, "n_routed_experts"), "moe_intermediate_size": moe_width,
               "shared_expert_intermediate_size": _hf_int(cfg, ctx, "n_shared_experts", 0) * moe_width,
               "num_dense_layers": sum(1 for i in range(layers) if not (i >= first and i % freq == 0)),
               "kv_lora_rank": _hf_int(cfg, ctx, "kv_lora_rank"), "q_lora_rank": _hf_int(cfg, ctx, "q_lora_rank", 0),
               "qk_nope_head_dim": _hf_int(cfg, ctx, "qk_nope_head_dim"),
               "qk_rope_head_dim": _hf_int(cfg, ctx, "qk_rope_head_dim"),
               "v_head_dim": _hf_int(cfg, ctx, "v_head_dim")}
    if out:
        out["num_experts_per_tok"] = _hf_int(cfg, ctx, "num_experts_per_tok")
    return out


def from_hf_config(cfg: dict[str, Any], name: str, ctx: Ctx) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (Llama, Mistral, Qwen2, OPT, Mixtral, Qwen3-MoE, DeepSeek)."""
    archs = cfg.get("architectures") or [cfg.get("model_type", "")]
    arch = str(archs[0]) if isinstance(archs, list) and archs else str(archs)
    model_type = cfg.get("model_type")
    is_opt = "OPT" in arch or model_type == "opt"
    if not is_opt and not any(k in arch for k in ("Llama", "Mistral", "Qwen2", "Mixtral", "Qwen3Moe", "Deepseek")) \
            and model_type not in ("llama", "mistral", "qwen2", "mixtral", "qwen3_moe", "deepseek_v2", "deepseek_v3"):
        raise ctx.at("architectures").error(
            "unsupported architecture; expected Llama, Mistral, Qwen2, OPT, Mixtral, Qwen3-MoE or DeepSeek-V2/V3", arch)
    raw_dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if raw_dtype not in _HF_DTYPES:
        key = "torch_dtype" if "torch_dtype" in cfg else "dtype"
        raise ctx.at(key).error(f"unsupported dtype; expected one of {', '.join(_HF_DTYPES)}", raw_dtype)
    quant = cfg.get("quantization_config")
    fp8 = isinstance(quant, dict) and quant.get("quant_method") == "fp8"     # e.g. DeepSeek-V3's block-fp8
    layers = _hf_int(cfg, ctx, "num_hidden_layers")
    hidden = _hf_int(cfg, ctx, "hidden_size")
    heads = _hf_int(cfg, ctx, "num_attention_heads")
    spec = {
        "name": name, "num_layers": layers, "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_kv_heads": heads if is_opt else _hf_int(cfg, ctx, "num_key_value_heads", heads),
        "intermediate_size": _hf_int(cfg, ctx, "ffn_dim" if is_opt else "intermediate_size"),
        "vocab_size": _hf_int(cfg, ctx, "vocab_size"),
        "max_model_len": _hf_int(cfg, ctx, "max_position_embeddings"),
        "head_dim": _hf_int(cfg, ctx, "head_dim", 0), "dtype": "fp8" if fp8 else _HF_DTYPES[raw_dtype],
        "gated_mlp": not is_opt, "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", is_opt)),
        "has_qkv_bias": "Qwen2" in arch or model_type == "qwen2", "architecture": arch,
        "word_embed_proj_dim": _hf_int(cfg, ctx, "word_embed_proj_dim", hidden) if is_opt else 0,
    }
    spec.update(_hf_moe_fields(cfg, ctx, arch, model_type, layers))
    if spec.get("kv_lora_rank"):
        spec["head_dim"] = 0                   # MLA head widths come from qk_*_head_dim / v_head_dim
    return build(ModelSpec, spec, ctx)


def load_model(ref: Any, ctx: Ctx) -> ModelSpec:
    """`model:` is a preset name, a path to a config.json (or its directory), or a mapping of fields."""
    if isinstance(ref, dict):
        return build(ModelSpec, ref, ctx)
    if not isinstance(ref, str):
        raise ctx.error("expected a preset name, a config.json path or a mapping", ref)
    key = ALIASES.get(ref.lower(), ref.lower())
    if key in PRESETS:
        return PRESETS[key]
    path = Path(ref).expanduser()
    if not path.is_absolute() and ctx.file:
        beside = Path(ctx.file).parent / path
        path = beside if beside.exists() else path
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ctx.error(f"unknown model; expected a preset ({', '.join(PRESETS)}) or a path to a config.json", ref)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ctx.error(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, dict):
        raise Ctx(str(path)).error("expected a JSON object")
    name = path.parent.name if path.name == "config.json" and path.parent.name else path.stem
    return from_hf_config(cfg, name, Ctx(str(path)))
