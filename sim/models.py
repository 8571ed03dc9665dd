"""Decoder-transformer model shapes: presets and Hugging Face `config.json` loading.

What the simulator needs from a model: how many bytes of weights each GPU holds, how many bytes
of KV cache a token costs (the paged allocator's unit), and the FLOPs and bytes of one token
through the linear layers (the cost model's roofline).  Tensor parallelism shards attention heads,
the MLP and the vocabulary across `tp` GPUs as vLLM does; KV heads are replicated when there are
fewer KV heads than GPUs (vLLM: `max(1, num_kv_heads // tp)` per rank).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.schema import Ctx, build, positive

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}
KV_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "int8": 1}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One decoder-only transformer (Llama / Mistral / Qwen2 / OPT families)."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_model_len: int
    head_dim: int = 0                 # 0: hidden_size // num_attention_heads
    dtype: str = "bfloat16"           # weight dtype: bfloat16 | float16 | float32 | fp8
    gated_mlp: bool = True            # SwiGLU (gate, up, down) vs OPT's fc1/fc2
    tie_word_embeddings: bool = False
    has_qkv_bias: bool = False
    architecture: str = "LlamaForCausalLM"

    def validate(self, ctx: Ctx) -> None:
        for key in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "intermediate_size",
                    "vocab_size", "max_model_len"):
            positive(ctx, key, getattr(self, key))
        if self.num_attention_heads % self.num_kv_heads:
            raise ctx.at("num_kv_heads").error(
                f"must divide num_attention_heads ({self.num_attention_heads})", self.num_kv_heads)
        if self.dtype not in DTYPE_BYTES:
            raise ctx.at("dtype").error(f"expected one of {', '.join(DTYPE_BYTES)}", self.dtype)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def kv_heads_per_rank(self, tp: int) -> int:
        return max(1, self.num_kv_heads // tp)

    def kv_dtype_bytes(self, kv_cache_dtype: str) -> int:
        return 2 if kv_cache_dtype == "auto" and self.dtype == "fp8" else (
            self.dtype_bytes if kv_cache_dtype == "auto" else KV_DTYPE_BYTES[kv_cache_dtype])

    def kv_bytes_per_token(self, kv_cache_dtype: str = "auto", tp: int = 1) -> int:
        """K and V of every layer for one token on one GPU."""
        return 2 * self.num_layers * self.kv_heads_per_rank(tp) * self.head_size * self.kv_dtype_bytes(kv_cache_dtype)

    # -- parameters ------------------------------------------------------------------------
    def _layer_linear_params(self, tp: int) -> int:
        h, d = self.hidden_size, self.head_size
        q = self.num_attention_heads * d // tp
        kv = 2 * self.kv_heads_per_rank(tp) * d
        attn = h * (q + kv) + q * h
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size // tp
        return attn + mlp

    def linear_params(self, tp: int = 1) -> int:
        """Weights multiplied by every token on one GPU: all layers' projections + the LM head."""
        return self.num_layers * self._layer_linear_params(tp) + self.vocab_size * self.hidden_size // tp

    @property
    def num_params(self) -> int:
        h = self.hidden_size
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        norms = self.num_layers * 2 * h + h
        bias = self.num_layers * (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_size if self.has_qkv_bias else 0
        if not self.gated_mlp:   # OPT: biases everywhere + learned positions
            bias += self.num_layers * (4 * h + self.intermediate_size + h) + self.max_model_len * h
        return self.num_layers * self._layer_linear_params(1) + embed + head + norms + bias

    def weight_bytes(self, tp: int = 1) -> int:
        """Bytes of weights on each GPU of a TP group (vocab and heads sharded, norms replicated)."""
        h = self.hidden_size
        embed = self.vocab_size * h // tp
        head = 0 if self.tie_word_embeddings else self.vocab_size * h // tp
        layers = self.num_layers * (self._layer_linear_params(tp) + 2 * h)
        return (layers + embed + head + h) * self.dtype_bytes

    def linear_flops_per_token(self, tp: int = 1) -> float:
        return 2.0 * self.linear_params(tp)

    def linear_weight_bytes(self, tp: int = 1) -> int:
        return self.linear_params(tp) * self.dtype_bytes


PRESETS: dict[str, ModelSpec] = {m.name: m for m in (
    # numbers from each model's Hugging Face config.json
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
    ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, architecture="MistralForCausalLM"),
    ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 32768, has_qkv_bias=True, architecture="Qwen2ForCausalLM"),
    ModelSpec("opt-13b", 40, 5120, 40, 40, 20480, 50272, 2048, dtype="float16", gated_mlp=False,
              tie_word_embeddings=True, architecture="OPTForCausalLM"),
)}
ALIASES = {"meta-llama/meta-llama-3-8b": "llama-3-8b", "meta-llama/meta-llama-3-70b": "llama-3-70b",
           "llama3-8b": "llama-3-8b", "llama3-70b": "llama-3-70b", "mistralai/mistral-7b-v0.1": "mistral-7b",
           "qwen/qwen2.5-7b": "qwen2.5-7b", "facebook/opt-13b": "opt-13b"}


def _hf_field(cfg: dict[str, Any], ctx: Ctx, *names: str, default: Any = None) -> Any:
    for n in names:
        if n in cfg and cfg[n] is not None:
            return cfg[n]
    if default is not None:
        return default
    raise ctx.at(names[0]).error("missing in config.json")


def from_hf_config(cfg: dict[str, Any], name: str, ctx: Ctx) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (Llama, Mistral, Qwen2 or OPT field names)."""
    archs = cfg.get("architectures") or [cfg.get("model_type", "")]
    arch = str(archs[0])
    is_opt = "OPT" in arch or cfg.get("model_type") == "opt"
    if not is_opt and not any(k in arch for k in ("Llama", "Mistral", "Qwen2")) and cfg.get("model_type") not in ("llama", "mistral", "qwen2"):
        raise ctx.at("architectures").error("unsupported architecture; expected Llama, Mistral, Qwen2 or OPT", arch)
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    heads = int(_hf_field(cfg, ctx, "num_attention_heads"))
    spec = {
        "name": name, "num_layers": int(_hf_field(cfg, ctx, "num_hidden_layers")),
        "hidden_size": int(_hf_field(cfg, ctx, "hidden_size")), "num_attention_heads": heads,
        "num_kv_heads": int(cfg.get("num_key_value_heads") or heads),
        "intermediate_size": int(_hf_field(cfg, ctx, "ffn_dim" if is_opt else "intermediate_size")),
        "vocab_size": int(_hf_field(cfg, ctx, "vocab_size")),
        "max_model_len": int(_hf_field(cfg, ctx, "max_position_embeddings")),
        "head_dim": int(cfg.get("head_dim") or 0), "dtype": dtype if dtype in DTYPE_BYTES else "bfloat16",
        "gated_mlp": not is_opt, "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", is_opt)),
        "has_qkv_bias": "Qwen2" in arch, "architecture": arch,
    }
    return build(ModelSpec, spec, ctx)


def load_model(ref: Any, ctx: Ctx) -> ModelSpec:
    """`model:` is a preset name, a path to a config.json (or its directory), or a mapping."""
    if isinstance(ref, dict):
        return build(ModelSpec, ref, ctx)
    if not isinstance(ref, str):
        raise ctx.error("expected a preset name, a config.json path or a mapping", ref)
    key = ALIASES.get(ref.lower(), ref.lower())
    if key in PRESETS:
        return PRESETS[key]
    path = Path(ref)
    if not path.is_absolute() and ctx.file:
        beside = Path(ctx.file).parent / path
        path = beside if beside.exists() else path
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ctx.error(f"unknown model; expected a preset ({', '.join(PRESETS)}) or a path to a config.json", ref)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ctx.error(f"cannot read {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise Ctx(str(path)).error("expected a JSON object")
    return from_hf_config(cfg, path.parent.name or path.stem, Ctx(str(path)))
