"""Model shapes for calibration: one tensor-parallel shard's layer dimensions.

A calibrated profile belongs to a (GPU, model shard) pair, because attention time depends on the
shard's KV heads and GEMM time on its weight shapes.  Shapes come from `sim.model_catalog.load_model` when
that module exists; until then (and as a fallback) a small built-in table covers the Llama-3 models.
Tensor parallelism splits attention heads, KV heads (at least one per rank, as vLLM replicates them),
the MLP's intermediate size and the vocabulary across `tp` ranks; one GPU times one shard.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ShardShape:
    """Per-rank dimensions of one model under tensor parallelism."""

    name: str
    tp: int
    num_layers: int
    hidden_size: int
    num_heads: int            # query heads on this rank
    num_kv_heads: int         # KV heads on this rank (replicated when tp > total KV heads)
    head_dim: int
    intermediate_size: int    # MLP intermediate size on this rank
    vocab_size: int           # LM-head rows on this rank
    gated_mlp: bool = True    # SwiGLU: gate and up projections fused into one GEMM
    dtype: str = "bf16"       # weights and activations

    def gemm_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one transformer layer, plus the LM head."""
        d = self.head_dim
        up = self.intermediate_size * (2 if self.gated_mlp else 1)
        return {
            "qkv": (self.hidden_size, (self.num_heads + 2 * self.num_kv_heads) * d),
            "o": (self.num_heads * d, self.hidden_size),
            "gate_up": (self.hidden_size, up),
            "down": (self.intermediate_size, self.hidden_size),
            "lm_head": (self.hidden_size, self.vocab_size),
        }


# name: (layers, hidden, heads, kv heads, head_dim, intermediate, vocab)
_BUILTIN: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "llama-3-8b": (32, 4096, 32, 8, 128, 14336, 128256),
    "llama-3-70b": (80, 8192, 64, 8, 128, 28672, 128256),
}


def _from_sim_models(name: str) -> Any | None:
    """The lead's `sim.model_catalog.load_model(name, ctx)` when present, else None."""
    try:
        mod = importlib.import_module("sim.model_catalog")
    except ImportError:
        return None
    load = getattr(mod, "load_model", None)
    if load is None:
        return None
    try:
        from sim.schema import Ctx
        return load(name, Ctx("pagesim calibrate", "--model"))
    except Exception:  # an unknown name there may still be in the built-in table
        return None


def shard_shape(name: str, tp: int = 1) -> ShardShape:
    """Shapes of rank 0 of `name` split `tp` ways; ValueError for an unknown model or bad tp."""
    if tp < 1:
        raise ValueError(f"--tp must be >= 1 (got {tp})")
    spec = _from_sim_models(name)
    if spec is not None:
        full = (spec.num_layers, spec.hidden_size, spec.num_attention_heads, spec.num_kv_heads,
                getattr(spec, "head_size", spec.head_dim), spec.intermediate_size, spec.vocab_size)
        gated, dtype = bool(getattr(spec, "gated_mlp", True)), str(getattr(spec, "dtype", "bf16"))
    elif name in _BUILTIN:
        full, gated, dtype = _BUILTIN[name], True, "bf16"
    else:
        raise ValueError(f"unknown model {name!r}; expected one of: {', '.join(sorted(_BUILTIN))}")
    layers, hidden, heads, kv_heads, head_dim, inter, vocab = full
    if heads % tp or inter % tp:
        raise ValueError(f"{name}: {heads} heads / intermediate {inter} do not split {tp} ways")
    if dtype in ("bfloat16", "auto"):
        dtype = "bf16"
    elif dtype in ("float16", "half"):
        dtype = "fp16"
    return ShardShape(name=name, tp=tp, num_layers=layers, hidden_size=hidden, num_heads=heads // tp,
                      num_kv_heads=max(1, kv_heads // tp), head_dim=head_dim,
                      intermediate_size=inter // tp, vocab_size=-(-vocab // tp),
                      gated_mlp=gated, dtype=dtype)


def tiny_shape(name: str = "tiny") -> ShardShape:
    """A toy shard for `--interpret` runs: every kernel and GEMM path, nothing that takes long on a CPU."""
    return ShardShape(name=name, tp=1, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                      head_dim=32, intermediate_size=128, vocab_size=256)
