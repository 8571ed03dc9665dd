"""Datasheet (roofline) cost profiles: what a GPU *should* take, before anything is measured.

Each component of `sim.cost_model` gets coefficients from the model's shapes and the GPU's
datasheet numbers, derated by achievable-efficiency factors (documented below; calibration
replaces them with measurements):

* linear(T) = max(2·params_linear·T / (peak FLOP/s · GEMM_EFF), weight_bytes / (HBM · BW_EFF)),
  sampled on a token grid that contains the knee, so the table is exact between points;
* decode attention: s_per_kv_token = KV bytes per token / (HBM · BW_EFF); s_per_seq covers one
  block-table walk per block of the sequence average (folded into a per-seq constant) plus
  the per-sequence softmax state; intercept = one kernel launch per layer;
* prefill attention: 4·heads·head_dim FLOPs per causal pair per layer at FA_EFF of peak;
* all-reduce: ring all-reduce over NVLink/PCIe, 2 per layer, plus a per-call latency;
* swap: whole KV blocks over the host link (PCIe), one DMA per block per layer (vLLM's
  swap_blocks copies each layer's block separately), each with a fixed latency.

Mixture-of-experts models add, per MoE layer, the routed experts' GEMMs to linear(T): a roofline
over the expected distinct experts T tokens touch (`sim.moe`), so a decode step of a few tokens
reads few experts and a large batch reads them all.  It depends on T only, so it is folded into
the same table (no extra hot-loop work); the grid gets extra points where the curve bends.
Multi-head latent attention: decode reads one latent per cached token per layer, and its
absorbed kernel does heads x 2 x (kv_lora_rank + rope + kv_lora_rank) FLOPs on it; prefill
attention pairs cost heads x 2 x (qk_nope + qk_rope + v_head_dim) FLOPs.
"""

from __future__ import annotations

from typing import Any

from sim.cost_model import AttnCoeffs, CostProfile
from sim.moe import expert_knee_tokens, expert_layer_seconds

GEMM_EFF = 0.70          # fraction of dense peak that large bf16 GEMMs reach (cuBLAS on H100: 0.6-0.8)
BW_EFF = 0.80            # fraction of HBM peak that streaming weight/KV reads reach
FA_EFF = 0.45            # fraction of peak that FlashAttention-style prefill reaches on short chunks
KERNEL_LAUNCH_S = 4e-6   # per kernel launch (amortised by CUDA graphs in decode)
STEP_OVERHEAD_S = 1.5e-3  # scheduler + input prep + sampling + detokenize, per step (CPU side)
ALLREDUCE_LATENCY_S = 8e-6
SWAP_COPY_LATENCY_S = 5e-6  # per cudaMemcpyAsync of one block of one layer


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "fp32") else 2


def _moe_grid_and_seconds(model: Any, tp: int, expert_parallel: bool, flops: float,
                          bw: float) -> tuple[set[int], Any]:
    """Extra grid points and the routed-expert seconds of all MoE layers as a function of T."""
    ep = tp if expert_parallel else 1
    slice_tp = 1 if expert_parallel else tp
    kw = dict(num_experts=model.num_experts, top_k=model.num_experts_per_tok, ep=ep,
              flops_per_pair=model.expert_flops_per_pair(slice_tp),
              bytes_per_expert=float(model.expert_weight_bytes(slice_tp)), flops_per_s=flops * GEMM_EFF,
              bytes_per_s=bw)
    knee = expert_knee_tokens(model.num_experts, model.num_experts_per_tok, kw["flops_per_pair"],
                              kw["bytes_per_expert"], kw["flops_per_s"], bw)
    # the distinct-expert curve bends over T = 1 .. a few E/k: half-octave points keep the
    # piecewise-linear table within a few % of the curve
    extra = {2, 3, 4, 6} | {3 << i for i in range(1, 15)} | {max(1, int(knee)), int(knee) + 1}
    layers = model.num_moe_layers

    def seconds(t: int) -> float:
        return layers * expert_layer_seconds(float(t), **kw)
    return extra, seconds


def roofline_profile(model: Any, hw: Any, tp: int, kv_dtype: str, block_sizes: tuple[int, ...] = (8, 16, 32, 64, 128),
                     expert_parallel: bool = False) -> CostProfile:
    """A CostProfile for `model` sharded `tp` ways on GPUs `hw`, from datasheets.

    `expert_parallel`: an MoE model's experts are split whole across the TP group (vLLM's
    `enable_expert_parallel`)."""
    flops = hw.fp8_flops if (getattr(model, "dtype", "") == "fp8" and hw.fp8_flops) else hw.bf16_flops
    bw = hw.hbm_bandwidth_bytes_per_s * BW_EFF
    flop_per_token = model.linear_flops_per_token(tp)
    weight_bytes = model.linear_weight_bytes(tp)
    knee = weight_bytes / bw * flops * GEMM_EFF / max(flop_per_token, 1.0)
    points = {1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
              max(1, int(knee)), max(1, int(knee) + 1)}
    moe = getattr(model, "num_experts", 0) > 0
    if moe:
        extra, expert_s = _moe_grid_and_seconds(model, tp, expert_parallel, flops, bw)
        points |= {t for t in extra if t <= 65536}
    grid = sorted(points)
    secs = [max(flop_per_token * t / (flops * GEMM_EFF), weight_bytes / bw) for t in grid]
    if moe:
        secs = [s + expert_s(t) for s, t in zip(secs, grid, strict=True)]
    layers = model.num_layers
    kv_tok = model.kv_bytes_per_token(kv_dtype, tp)
    decode: dict[int, AttnCoeffs] = {}
    prefill: dict[int, AttnCoeffs] = {}
    heads = max(1, model.num_attention_heads // tp)
    pair_flops = 4.0 * heads * model.head_size * layers   # head_size: head_dim or hidden / heads
    kv_token_s = kv_tok / bw
    if getattr(model, "kv_lora_rank", 0):
        pair_flops = 2.0 * heads * (model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim) * layers
        latent = model.kv_lora_rank + model.qk_rope_head_dim
        kv_token_s = max(kv_token_s, 2.0 * heads * (latent + model.kv_lora_rank) * layers / (flops * FA_EFF))
    for bs in block_sizes:
        # One block-table entry read + one partially used block per sequence per layer: smaller
        # blocks mean more, smaller memory transactions.  Modelled as half a block of wasted
        # read per sequence per layer plus 64 B of table/softmax state.
        per_seq = layers * (64 + 0.5 * bs * kv_tok / layers) / bw
        decode[bs] = AttnCoeffs(intercept_s=layers * KERNEL_LAUNCH_S * 0.25, s_per_seq=per_seq,
                                s_per_kv_token=kv_token_s)
        prefill[bs] = AttnCoeffs(intercept_s=layers * KERNEL_LAUNCH_S, s_per_query_token=kv_tok / bw,
                                 s_per_pair=pair_flops / (flops * FA_EFF))
    hidden_bytes = model.hidden_size * _dtype_bytes(getattr(model, "dtype", "bfloat16"))
    ring = 2.0 * (tp - 1) / tp if tp > 1 else 0.0
    link = getattr(hw, "interconnect_bytes_per_s", 0.0) or hw.host_link_bytes_per_s
    return CostProfile(
        kind="roofline", gpu=hw.name, model=model.name, tensor_parallel_size=tp,
        step_overhead_s=STEP_OVERHEAD_S,
        linear_tokens=tuple(float(t) for t in grid), linear_seconds=tuple(secs),
        decode_attention={kv_dtype: decode}, prefill_attention={kv_dtype: prefill},
        allreduce_s_per_call=ALLREDUCE_LATENCY_S if tp > 1 else 0.0,
        allreduce_s_per_token=(2 * layers * ring * hidden_bytes / link) if tp > 1 else 0.0,
        allreduce_calls_per_step=2 * layers if tp > 1 else 0,
        swap_s_per_block_copy=SWAP_COPY_LATENCY_S * layers,
        swap_s_per_byte=1.0 / hw.host_link_bytes_per_s,
        copy_s_per_block=layers * KERNEL_LAUNCH_S,
        provenance={"source": "datasheet roofline", "gemm_eff": GEMM_EFF, "bw_eff": BW_EFF,
                    "fa_eff": FA_EFF, "step_overhead_s": STEP_OVERHEAD_S,
                    **({"expert_parallel": bool(expert_parallel)} if moe else {})},
    )
