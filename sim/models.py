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

Mixture-of-experts models (Mixtral, Qwen3-MoE, DeepSeek-V2/V3): every MoE layer holds
`num_experts` routed experts (gated MLPs of `moe_intermediate_size`), of which each token uses
`num_experts_per_tok`, plus optional always-on shared experts and a router (`gate`, E x hidden,
replicated, 16-bit).  vLLM's `FusedMoE` shards every expert's width tp ways, or with
`enable_expert_parallel` gives each GPU ceil(E/tp) whole experts (fused_moe/config.py
`FusedMoEParallelConfig.make`, `determine_expert_map`).  Every expert's weights are resident;
which of them a step reads is `sim.moe`'s business.  The first `num_dense_layers` layers
(DeepSeek `first_k_dense_replace`) keep a dense MLP of `intermediate_size`.

Multi-head latent attention (DeepSeek, models/deepseek_v2.py `DeepseekV2MLAAttention`): q_a
(hidden -> q_lora_rank) and kv_a (hidden -> kv_lora_rank + qk_rope_head_dim) are replicated;
q_b, kv_b (-> heads x (qk_nope + v)) column-parallel, o_proj row-parallel.  The KV cache keeps
one latent "head" of kv_lora_rank + qk_rope_head_dim per token and layer, the same on every TP
rank (vllm/v1/kv_cache_interface.py `MLAAttentionSpec`: num_kv_heads=1, head_size_v=0).
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
    # Mixture of experts (num_experts 0: a dense model)
    num_experts: int = 0              # routed experts per MoE layer (num_local_experts | num_experts | n_routed_experts)
    num_experts_per_tok: int = 0      # experts each token is routed to (top-k)
    moe_intermediate_size: int = 0    # one routed expert's MLP width (Mixtral: intermediate_size)
    shared_expert_intermediate_size: int = 0  # always-on shared experts, total width (DeepSeek: n_shared x moe width)
    num_dense_layers: int = 0         # layers with a dense MLP (first_k_dense_replace; Qwen3 mlp_only_layers)
    # Multi-head latent attention (kv_lora_rank 0: ordinary attention)
    kv_lora_rank: int = 0             # compressed KV latent width
    q_lora_rank: int = 0              # compressed query width (0: a full q_proj)
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0         # decoupled rotary key, cached beside the latent
    v_head_dim: int = 0

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
        self._validate_moe(ctx)

    def _validate_moe(self, ctx: Ctx) -> None:
        for key in ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                    "num_dense_layers", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                    "v_head_dim"):
            positive(ctx, key, getattr(self, key), allow_zero=True)
        if self.num_experts:
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                raise ctx.at("num_experts_per_tok").error(
                    f"expected 1..num_experts ({self.num_experts})", self.num_experts_per_tok)
            positive(ctx, "moe_intermediate_size", self.moe_intermediate_size)
            if not self.gated_mlp:
                raise ctx.at("gated_mlp").error("mixture-of-experts models have gated (SwiGLU) experts", False)
            if self.num_dense_layers >= self.num_layers:
                raise ctx.at("num_dense_layers").error(
                    f"expected fewer than num_layers ({self.num_layers}): an MoE model needs an MoE layer",
                    self.num_dense_layers)
        else:
            for key in ("num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size",
                        "num_dense_layers"):
                if getattr(self, key):
                    raise ctx.at(key).error("only for mixture-of-experts models; set num_experts", getattr(self, key))
        if self.kv_lora_rank:
            for key in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                positive(ctx, key, getattr(self, key))
        elif self.q_lora_rank or self.qk_rope_head_dim or self.qk_nope_head_dim or self.v_head_dim:
            raise ctx.at("kv_lora_rank").error("latent attention (q_lora_rank, qk_*_head_dim, v_head_dim) needs "
                                               "kv_lora_rank > 0", 0)

    def check_tensor_parallel(self, tp: int, ctx: Ctx, expert_parallel: bool = False) -> None:
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
        if self.num_experts and not expert_parallel and self.moe_intermediate_size % tp:
            raise ctx.error(f"{self.name}'s moe_intermediate_size {self.moe_intermediate_size} must be divisible by "
                            "tensor_parallel_size (or set enable_expert_parallel)", tp)

    # -- shapes ------------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.num_dense_layers if self.num_experts else 0

    @property
    def head_size(self) -> int:
        """Query/key width of one head (MLA: the no-rope and rope parts)."""
        if self.kv_lora_rank:
            return self.qk_nope_head_dim + self.qk_rope_head_dim
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
        """K and V of every layer for one token on one GPU: 2 x layers x kv_heads_per_rank x head_dim x bytes.

        MLA: layers x (kv_lora_rank + qk_rope_head_dim) x bytes, one latent on every rank (not / tp)."""
        if self.kv_lora_rank:
            return self.num_layers * (self.kv_lora_rank + self.qk_rope_head_dim) * self.kv_dtype_bytes(kv_cache_dtype)
        return 2 * self.num_layers * self.kv_heads_per_rank(tp) * self.head_size * self.kv_dtype_bytes(kv_cache_dtype)

    # -- parameters ------------------------------------------------------------------------
    def _attn_params(self, tp: int) -> int:
        """Attention projections of one layer on one rank."""
        h, d = self.hidden_size, self.head_size
        if self.kv_lora_rank:
            heads = self.num_attention_heads // tp
            q_out = heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
            q = h * self.q_lora_rank + self.q_lora_rank * q_out if self.q_lora_rank else h * q_out
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)                 # replicated
            kv_b = self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + heads * self.v_head_dim * h
        q = self.num_attention_heads // tp * d
        kv = 2 * self.kv_heads_per_rank(tp) * d
        return h * (q + kv) + q * h

    def _layer_linear_params(self, tp: int) -> int:
        """Matmul weights of one dense layer on one rank (no biases)."""
        mlp = (3 if self.gated_mlp else 2) * self.hidden_size * (self.intermediate_size // tp)
        return self._attn_params(tp) + mlp

    def _moe_layer_dense_params(self, tp: int) -> int:
        """Weights of one MoE layer every token multiplies on one rank: attention, shared experts, router."""
        shared = 3 * self.hidden_size * (self.shared_expert_intermediate_size // tp)
        return self._attn_params(tp) + shared + self._gate_params()

    def _gate_params(self) -> int:
        return self.hidden_size * self.num_experts              # the router, replicated

    def expert_params(self, tp: int = 1) -> int:
        """One routed expert's gate/up/down on one rank (its 1/tp slice; tp=1: the whole expert)."""
        return 3 * self.hidden_size * (self.moe_intermediate_size // tp)

    def experts_per_rank(self, ep: int = 1) -> int:
        """Routed experts each GPU holds per MoE layer: all (sliced) without EP, ceil(E/ep) with it."""
        return -(-self.num_experts // ep)

    def _expert_weight_params(self, tp: int, expert_parallel: bool) -> int:
        """All MoE layers' routed-expert weights held by one rank."""
        if expert_parallel:
            return self.num_moe_layers * self.experts_per_rank(tp) * self.expert_params(1)
        return self.num_moe_layers * self.num_experts * self.expert_params(tp)

    def _layers_token_params(self, tp: int) -> int:
        """All layers' weights every token multiplies on one rank (routed experts excluded)."""
        if not self.num_experts:
            return self.num_layers * self._layer_linear_params(tp)
        return (self.num_dense_layers * self._layer_linear_params(tp)
                + self.num_moe_layers * self._moe_layer_dense_params(tp))

    def _layer_other_params(self, tp: int) -> int:
        """Norms and biases of one layer on one rank."""
        h, d = self.hidden_size, self.head_size
        if self.gated_mlp:                   # two RMSNorm weights (+ Qwen2's q/k/v biases, sharded)
            bias = (self.num_attention_heads // tp + 2 * self.kv_heads_per_rank(tp)) * d if self.has_qkv_bias else 0
            mla_norms = self.q_lora_rank + self.kv_lora_rank    # q_a_layernorm, kv_a_layernorm
            return 2 * h + bias + mla_norms
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
        """Weights multiplied by every token on one GPU: all layers' projections + the LM head.

        MoE: attention, dense and shared MLPs and routers; the routed experts are `expert_params`."""
        return self._layers_token_params(tp) + self._lm_head_params(tp)

    @property
    def num_params(self) -> int:
        """Parameters as the checkpoint counts them (unpadded vocabulary, tied head counted once)."""
        layers = self._layers_token_params(1) + self.num_layers * self._layer_other_params(1)
        return layers + self._expert_weight_params(1, False) + self._embedding_params(1, padded=False)

    @property
    def num_active_params(self) -> int:
        """Parameters one token uses: all but the routed experts it is not sent to."""
        unused = self.num_moe_layers * (self.num_experts - self.num_experts_per_tok) * self.expert_params(1)
        return self.num_params - unused

    def weight_bytes(self, tp: int = 1, expert_parallel: bool = False) -> int:
        """Bytes of weights on each GPU of a TP group (vocab and heads sharded, norms replicated).

        Includes the rotary cos/sin cache vLLM keeps as a buffer ([max_position, rotary dim]).
        MoE: every expert is resident: a 1/tp slice of each, or ceil(E/tp) whole ones with EP.
        """
        gates = self.num_moe_layers * self._gate_params()               # routers stay 16-bit
        linear = (self._layers_token_params(tp) - gates + self._expert_weight_params(tp, expert_parallel)) \
            * self.dtype_bytes
        other = (self.num_layers * self._layer_other_params(tp) + self._embedding_params(tp) + gates) \
            * self.activation_bytes
        rotary_dim = self.qk_rope_head_dim if self.kv_lora_rank else self.head_size
        rotary = self.max_model_len * rotary_dim * self.activation_bytes if self.gated_mlp else 0
        return linear + other + rotary

    def linear_flops_per_token(self, tp: int = 1) -> float:
        """2 FLOPs (multiply + add) per linear weight, per token, on one rank."""
        return 2.0 * self.linear_params(tp)

    def linear_weight_bytes(self, tp: int = 1) -> int:
        """Bytes one rank streams from HBM for the linear layers in one forward pass (LM head included).

        MoE: the weights every token reads; routed experts are read per step as `sim.moe` counts."""
        gates = self.num_moe_layers * self._gate_params()
        return ((self._layers_token_params(tp) - gates) * self.dtype_bytes
                + (self._lm_head_params(tp) + gates) * self.activation_bytes)

    def expert_flops_per_pair(self, tp: int = 1) -> float:
        """FLOPs of one token through one routed expert on one rank (its 1/tp slice)."""
        return 2.0 * self.expert_params(tp)

    def expert_weight_bytes(self, tp: int = 1) -> int:
        """Bytes of one routed expert's weights on one rank (its 1/tp slice)."""
        return self.expert_params(tp) * self.dtype_bytes


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
