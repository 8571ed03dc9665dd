"""Paged decode attention (one new query token per sequence) in Triton, with split-KV.

What it models: vLLM's decode step.  Each program owns one (sequence, KV head, KV split): it loads
the GQA group's query heads once (padded to 16 rows so `tl.dot` is legal on the GPU), walks its
range of context tokens `BLOCK_N` at a time — each token's physical row found through the block
table, so any block size from 8 to 128 works and a tile may span several blocks — and keeps an
online softmax in float32 (exp2, with log2(e) folded into the scale).  Decode is memory bound: the
kernel reads each cached K/V byte once, so time ≈ KV bytes / HBM bandwidth plus per-sequence and
launch overheads, which is what `decode_attention` in the cost profile fits.

Long contexts with few sequences would leave SMs idle, so the context is split over `num_splits`
programs (flash-decoding); each writes a normalized partial output and its log-sum-exp, and a small
reduction kernel merges them.  fp8 (e4m3) and int8 caches carry one per-tensor scale for K and one
for V; both are folded into the score scale and the output instead of scaling every element.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from calibrate.kernels import is_interpreting

LOG2E = 1.4426950408889634
INTERPRETED = is_interpreting()   # how @triton.jit below was set up at import


@triton.jit
def _decode_kernel(
    Q, K, V, BT, CTX, Out, MID_O, MID_LSE,
    qk_scale, v_scale, tokens_per_split,
    stride_qb, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_btb, stride_ob, stride_oh, stride_mb, stride_mh, stride_ms, stride_lb, stride_lh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr, SPLIT: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(CTX + b)
    start = split * tokens_per_split
    end = tl.minimum(ctx, start + tokens_per_split)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    heads = kvh * GROUP + offs_g
    g_mask = offs_g < GROUP
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    if COMPUTE == "fp32":
        q = q.to(tl.float32)
    elif COMPUTE == "fp16":
        q = q.to(tl.float16)

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    for t0 in range(start, end, BLOCK_N):
        toks = t0 + offs_n
        t_mask = toks < end
        blk = tl.load(BT + b * stride_btb + toks // BLOCK_SIZE, mask=t_mask, other=0).to(tl.int64)
        row = toks % BLOCK_SIZE
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(K + blk[:, None] * stride_kb + row[:, None] * stride_kt + kvh * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + blk[:, None] * stride_vb + row[:, None] * stride_vt + kvh * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        k = k.to(q.dtype)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where(t_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc * (v_scale / l_safe)[:, None]
    o_mask = g_mask[:, None] & d_mask[None, :]
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(MID_O + b * stride_mb + heads[:, None] * stride_mh + split * stride_ms + offs_d[None, :],
                 out, mask=o_mask)
        tl.store(MID_LSE + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)
    else:
        tl.store(Out + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=o_mask)


@triton.jit
def _reduce_kernel(
    MID_O, MID_LSE, Out, num_splits,
    stride_mb, stride_mh, stride_ms, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < num_splits
    lse = tl.load(MID_LSE + b * stride_lb + h * stride_lh + offs_s, mask=s_mask, other=float("-inf"))
    w = tl.math.exp2(lse - tl.max(lse, 0))   # empty splits have lse = -inf and weigh 0
    parts = tl.load(MID_O + b * stride_mb + h * stride_mh + offs_s[:, None] * stride_ms + offs_d[None, :],
                    mask=s_mask[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, out.to(Out.dtype.element_ty), mask=offs_d < HEAD_DIM)


def dot_dtype(q_dtype: torch.dtype, cache_dtype: torch.dtype) -> str:
    """Operand dtype of the kernel's dots: fp16 for fp8/int8 caches (exact for e4m3 and int8 values,
    and the cheapest conversion on Hopper), fp32 where the interpreter's bf16 dot is wrong, else q's."""
    if cache_dtype in (torch.float8_e4m3fn, torch.int8):
        return "fp16"
    if is_interpreting() and q_dtype == torch.bfloat16:
        return "fp32"
    return "q"


def choose_num_splits(num_seqs: int, num_kv_heads: int, max_context: int, block_n: int,
                      num_sms: int = 132, min_tokens_per_split: int = 512) -> int:
    """Enough programs to cover the SMs about twice, but no split shorter than `min_tokens_per_split`."""
    want = -(-2 * num_sms // max(1, num_seqs * num_kv_heads))
    most = max(1, max_context // max(min_tokens_per_split, block_n))
    return max(1, min(want, most, 64))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, *,
                           scale: float | None = None, k_scale: float = 1.0, v_scale: float = 1.0,
                           max_context: int | None = None, num_splits: int | None = None,
                           block_n: int | None = None, num_warps: int = 4, num_stages: int = 2
                           ) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context.

    q: [num_seqs, num_heads, head_dim] fp16/bf16; k_cache, v_cache: [num_blocks, block_size,
    num_kv_heads, head_dim] in fp16, bf16, float8_e4m3fn or int8 (dequantized as value × scale);
    block_tables: [num_seqs, max_blocks] int32; context_lens: [num_seqs] int32 (≥ 1, including the
    new token).  Returns [num_seqs, num_heads, head_dim] in q's dtype.
    """
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, kv_dim = k_cache.shape
    if kv_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"head shapes do not match: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous dimension of q and the caches")
    group = num_heads // num_kv_heads
    if scale is None:
        scale = head_dim ** -0.5
    if max_context is None:
        max_context = int(context_lens.max())
    if block_n is None:
        block_n = 16 if is_interpreting() else (64 if head_dim <= 128 else 32)
    if num_splits is None:
        sms = 1 if is_interpreting() else torch.cuda.get_device_properties(q.device).multi_processor_count
        num_splits = choose_num_splits(num_seqs, num_kv_heads, max_context, block_n, sms)
    tokens_per_split = -(-max_context // num_splits)
    tokens_per_split = -(-tokens_per_split // block_n) * block_n
    num_splits = -(-max_context // tokens_per_split)

    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(head_dim))
    split = num_splits > 1
    if split:
        mid_o = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    else:
        mid_o, mid_lse = out, out.new_empty((1, 1), dtype=torch.float32)  # unused placeholders
    mo_strides = mid_o.stride()[:3] if split else (0, 0, 0)
    ml_strides = mid_lse.stride()[:2] if split else (0, 0)
    compute = dot_dtype(q.dtype, k_cache.dtype)
    _decode_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, mid_o, mid_lse,
        scale * k_scale * LOG2E, v_scale, tokens_per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), *mo_strides, *ml_strides,
        GROUP=group, BLOCK_G=max(16, triton.next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_N=block_n, COMPUTE=compute, SPLIT=split,
        num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _reduce_kernel[(num_seqs, num_heads)](
            mid_o, mid_lse, out, num_splits, *mo_strides, *ml_strides, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(2, triton.next_power_of_2(num_splits)),
            num_warps=4,
        )
    return out
