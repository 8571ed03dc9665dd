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

from dataclasses import dataclass

from sim.schema import Ctx, positive

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
