"""Decoder-transformer model shapes: presets and Hugging Face `config.json` loading.

What the simulator needs from a model: how many bytes of weights each GPU holds (the memory
planner), how many bytes of KV cache a token costs (the paged allocator's unit), and the FLOPs
and bytes of one token through the linear layers (the cost model's roofline).

Tensor parallelism shards the model the way vLLM's layers do:
- attention: `QKVParallelLinear` gives each rank `heads // tp` query heads and
  `max(1, num_kv_heads // tp)` KV heads (KV heads are replicated when tp > num_kv_heads);
  `o_proj` is row-parallel;
- MLP: gate/up column-parallel, down row-parallel (`intermediate_size // tp` per rank);
- vocabulary: `VocabParallelEmbedding` / `ParallelLMHead` pad the vocabulary to a multiple of 64
  and give each rank `padded // tp` rows;
- norms, row-parallel biases and OPT's learned positions are replicated on every rank.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.schema import Ctx, build, positive

# Weight dtypes (vLLM's --dtype; "fp8" = an FP8-quantised checkpoint: linear layers 1 byte,
# embeddings, LM head and norms stay 16-bit).
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "fp8": 1}
# vLLM's --kv-cache-dtype values other than "auto" (= the model dtype).
KV_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "bfloat16": 2, "float16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1,
                  "int8": 1}
VOCAB_PADDING = 64                      # vllm/model_executor/layers/vocab_parallel_embedding.py


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One decoder-only transformer (Llama / Mistral / Qwen2 / OPT families), as vLLM serves it."""

    name: str
    num_layers: int                   # num_hidden_layers
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int                 # num_key_value_heads (GQA); == heads for MHA
    intermediate_size: int            # MLP width (OPT: ffn_dim)
    vocab_size: int
    max_model_len: int                # max_position_embeddings
    head_dim: int = 0                 # 0: hidden_size // num_attention_heads
    dtype: str = "bfloat16"           # weight dtype: bfloat16 | float16 | float32 | fp8
    gated_mlp: bool = True            # SwiGLU (gate, up, down) vs OPT's fc1/fc2
    tie_word_embeddings: bool = False  # LM head shares the embedding matrix
    has_qkv_bias: bool = False        # Qwen2: biases on q/k/v projections
    architecture: str = "LlamaForCausalLM"
    word_embed_proj_dim: int = 0      # OPT's embedding width when it differs from hidden_size; 0: same

    def validate(self, ctx: Ctx) -> None:
        for key in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "intermediate_size",
                    "vocab_size", "max_model_len"):
            positive(ctx, key, getattr(self, key))
        positive(ctx, "head_dim", self.head_dim, allow_zero=True)
        positive(ctx, "word_embed_proj_dim", self.word_embed_proj_dim, allow_zero=True)
        if self.num_kv_heads > self.num_attention_heads or self.num_attention_heads % self.num_kv_heads:
            raise ctx.at("num_kv_heads").error(
                f"must divide num_attention_heads ({self.num_attention_heads})", self.num_kv_heads)
        if not self.head_dim and self.hidden_size % self.num_attention_heads:
            raise ctx.at("hidden_size").error(
                f"must be a multiple of num_attention_heads ({self.num_attention_heads}) unless head_dim is given",
                self.hidden_size)
        if self.dtype not in DTYPE_BYTES:
            raise ctx.at("dtype").error(f"expected one of {', '.join(DTYPE_BYTES)}", self.dtype)

    def check_tensor_parallel(self, tp: int, ctx: Ctx) -> None:
        """Refuse a TP degree vLLM refuses (heads, KV heads and the MLP must split evenly)."""
        if tp < 1:
            raise ctx.error("must be >= 1", tp)
        if self.num_attention_heads % tp:
            raise ctx.error(f"{self.name}'s {self.num_attention_heads} attention heads must be divisible by "
                            "tensor_parallel_size (vLLM refuses this)", tp)
        kv = self.num_kv_heads
        if (tp >= kv and tp % kv) or (tp < kv and kv % tp):
            raise ctx.error(f"{self.name}'s {kv} KV heads and tensor_parallel_size must divide one another", tp)
        if self.intermediate_size % tp:
            raise ctx.error(f"{self.name}'s intermediate_size {self.intermediate_size} must be divisible by "
                            "tensor_parallel_size", tp)

    # -- shapes ------------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of the linear layers' weights."""
        return DTYPE_BYTES[self.dtype]

    @property
    def activation_bytes(self) -> int:
        """Bytes per element of activations, embeddings and norms (fp8 checkpoints compute in 16 bit)."""
        return 2 if self.dtype == "fp8" else self.dtype_bytes

    @property
    def embed_dim(self) -> int:
        return self.word_embed_proj_dim or self.hidden_size

    def kv_heads_per_rank(self, tp: int = 1) -> int:
        return max(1, self.num_kv_heads // tp)

    def vocab_per_rank(self, tp: int = 1) -> int:
        """Rows of the embedding / LM head on one rank: vocabulary padded to 64, split tp ways."""
        return _cdiv(_cdiv(self.vocab_size, VOCAB_PADDING) * VOCAB_PADDING, tp)

    def kv_dtype_bytes(self, kv_cache_dtype: str = "auto") -> int:
        if kv_cache_dtype == "auto":
            return self.activation_bytes
        return KV_DTYPE_BYTES[kv_cache_dtype]

    def kv_bytes_per_token(self, kv_cache_dtype: str = "auto", tp: int = 1) -> int:
        """K and V of every layer for one token on one GPU: 2 x layers x kv_heads_per_rank x head_dim x bytes."""
        return 2 * self.num_layers * self.kv_heads_per_rank(tp) * self.head_size * self.kv_dtype_bytes(kv_cache_dtype)

    # -- parameters ------------------------------------------------------------------------
    def _layer_linear_params(self, tp: int) -> int:
        """Matmul weights of one layer on one rank (no biases)."""
        h, d = self.hidden_size, self.head_size
        q = self.num_attention_heads // tp * d
        kv = 2 * self.kv_heads_per_rank(tp) * d
        attn = h * (q + kv) + q * h
        mlp = (3 if self.gated_mlp else 2) * h * (self.intermediate_size // tp)
        return attn + mlp

    def _layer_other_params(self, tp: int) -> int:
        """Norms and biases of one layer on one rank."""
        h, d = self.hidden_size, self.head_size
        if self.gated_mlp:                   # two RMSNorm weights (+ Qwen2's q/k/v biases, sharded)
            bias = (self.num_attention_heads // tp + 2 * self.kv_heads_per_rank(tp)) * d if self.has_qkv_bias else 0
            return 2 * h + bias
        # OPT: two LayerNorms (weight + bias), biases on q/k/v (sharded), out_proj (replicated),
        # fc1 (sharded) and fc2 (replicated)
        qkv_bias = (self.num_attention_heads // tp + 2 * self.kv_heads_per_rank(tp)) * d
        return 4 * h + qkv_bias + h + self.intermediate_size // tp + h

    def _lm_head_params(self, tp: int) -> int:
        return self.vocab_per_rank(tp) * self.embed_dim

    def _embedding_params(self, tp: int, padded: bool = True) -> int:
        """Token embedding (+ OPT's learned positions and in/out projections) and the final norm."""
        h, e = self.hidden_size, self.embed_dim
        tokens = (self.vocab_per_rank(tp) if padded else self.vocab_size) * e
        head = 0 if self.tie_word_embeddings else (self.vocab_per_rank(tp) if padded else self.vocab_size) * e
        if self.gated_mlp:
            return tokens + head + h                        # final RMSNorm
        positions = (self.max_model_len + 2) * h            # OPT's positions start at offset 2
        proj = 2 * h * e if e != h else 0                   # project_in / project_out
        return tokens + head + positions + proj + 2 * h     # final LayerNorm

    def linear_params(self, tp: int = 1) -> int:
        """Weights multiplied by every token on one GPU: all layers' projections + the LM head."""
        return self.num_layers * self._layer_linear_params(tp) + self._lm_head_params(tp)

    @property
    def num_params(self) -> int:
        """Parameters as the checkpoint counts them (unpadded vocabulary, tied head counted once)."""
        layers = self.num_layers * (self._layer_linear_params(1) + self._layer_other_params(1))
        return layers + self._embedding_params(1, padded=False)

    def weight_bytes(self, tp: int = 1) -> int:
        """Bytes of weights on each GPU of a TP group (vocab and heads sharded, norms replicated).

        Includes the rotary cos/sin cache vLLM keeps as a buffer ([max_position, head_dim]).
        """
        linear = self.num_layers * self._layer_linear_params(tp) * self.dtype_bytes
        other = (self.num_layers * self._layer_other_params(tp) + self._embedding_params(tp)) * self.activation_bytes
        rotary = self.max_model_len * self.head_size * self.activation_bytes if self.gated_mlp else 0
        return linear + other + rotary

    def linear_flops_per_token(self, tp: int = 1) -> float:
        """2 FLOPs (multiply + add) per linear weight, per token, on one rank."""
        return 2.0 * self.linear_params(tp)

    def linear_weight_bytes(self, tp: int = 1) -> int:
        """Bytes one rank streams from HBM for the linear layers in one forward pass (LM head included)."""
        return (self.num_layers * self._layer_linear_params(tp) * self.dtype_bytes
                + self._lm_head_params(tp) * self.activation_bytes)


PRESETS: dict[str, ModelSpec] = {m.name: m for m in (
    # numbers from each model's Hugging Face config.json
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, head_dim=128),
    ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, head_dim=128),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768, head_dim=128, architecture="MistralForCausalLM"),
    ModelSpec("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 32768, head_dim=128, has_qkv_bias=True,
              architecture="Qwen2ForCausalLM"),
    ModelSpec("opt-13b", 40, 5120, 40, 40, 20480, 50272, 2048, head_dim=128, dtype="float16", gated_mlp=False,
              tie_word_embeddings=True, architecture="OPTForCausalLM"),
)}
ALIASES = {"meta-llama/meta-llama-3-8b": "llama-3-8b", "meta-llama/meta-llama-3-70b": "llama-3-70b",
           "llama3-8b": "llama-3-8b", "llama3-70b": "llama-3-70b", "mistralai/mistral-7b-v0.1": "mistral-7b",
           "qwen/qwen2.5-7b": "qwen2.5-7b", "facebook/opt-13b": "opt-13b"}
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


def from_hf_config(cfg: dict[str, Any], name: str, ctx: Ctx) -> ModelSpec:
    """A ModelSpec from a Hugging Face config.json (Llama, Mistral, Qwen2 or OPT field names)."""
    archs = cfg.get("architectures") or [cfg.get("model_type", "")]
    arch = str(archs[0]) if isinstance(archs, list) and archs else str(archs)
    model_type = cfg.get("model_type")
    is_opt = "OPT" in arch or model_type == "opt"
    if not is_opt and not any(k in arch for k in ("Llama", "Mistral", "Qwen2")) \
            and model_type not in ("llama", "mistral", "qwen2"):
        raise ctx.at("architectures").error("unsupported architecture; expected Llama, Mistral, Qwen2 or OPT", arch)
    raw_dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if raw_dtype not in _HF_DTYPES:
        key = "torch_dtype" if "torch_dtype" in cfg else "dtype"
        raise ctx.at(key).error(f"unsupported dtype; expected one of {', '.join(_HF_DTYPES)}", raw_dtype)
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
        "head_dim": _hf_int(cfg, ctx, "head_dim", 0), "dtype": _HF_DTYPES[raw_dtype],
        "gated_mlp": not is_opt, "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", is_opt)),
        "has_qkv_bias": "Qwen2" in arch or model_type == "qwen2", "architecture": arch,
        "word_embed_proj_dim": _hf_int(cfg, ctx, "word_embed_proj_dim", hidden) if is_opt else 0,
    }
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
