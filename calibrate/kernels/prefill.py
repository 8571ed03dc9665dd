"""Paged prefill / chunked-prefill attention in Triton.

What it models: vLLM's prefill step with chunked prefill.  The chunk's new K/V have already been
written into the paged cache (vLLM's reshape_and_cache runs first), so a sequence with `q_len` new
tokens and `context_len` cached tokens has a prefix of `context_len - q_len` tokens.  Each program
owns a tile of `BLOCK_M` new query tokens of one query head: it walks the paged cache up to the
tile's last position — the whole prefix unmasked, then the chunk itself under a causal mask on
absolute positions — with an online softmax in float32.  Work grows with q_len × (prefix + q_len/2)
score pairs, the `s_per_pair` term of `prefill_attention` in the cost profile.

A short chunk behind a long prefix makes few programs (tiles × heads), each streaming the whole
prefix through one SM; then the KV range is split over several programs as in decode, and the
decode reduction kernel merges their partial outputs.

Sequences are packed varlen-style: q is `[total_new_tokens, num_heads, head_dim]` and
`cu_seqlens_q` holds each sequence's first row.  KV dtypes and scales as in `decode.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from calibrate.kernels import is_interpreting
from calibrate.kernels.decode import _reduce_kernel, choose_num_splits, dot_dtype

LOG2E = 1.4426950408889634
INTERPRETED = is_interpreting()   # how @triton.jit below was set up at import


@triton.jit
def _prefill_kernel(
    Q, K, V, BT, CU_Q, CTX, Out, MID_O, MID_LSE,
    qk_scale, v_scale, num_splits, tokens_per_split,
    stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_btb, stride_ot, stride_oh, stride_mt, stride_mh, stride_ms, stride_lt, stride_lh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, COMPUTE: tl.constexpr, SPLIT: tl.constexpr,
):
    tile = tl.program_id(0) // num_splits
    split = tl.program_id(0) % num_splits
    b = tl.program_id(1)
    h = tl.program_id(2)
    kvh = h // GROUP
    q_first = tl.load(CU_Q + b)
    q_len = tl.load(CU_Q + b + 1) - q_first
    ctx = tl.load(CTX + b)
    prefix = ctx - q_len

    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    m_mask = offs_m < q_len
    d_mask = offs_d < HEAD_DIM
    q = tl.load(Q + (q_first + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    if COMPUTE == "fp32":
        q = q.to(tl.float32)
    elif COMPUTE == "fp16":
        q = q.to(tl.float16)
    pos = prefix + offs_m                                   # absolute position of each query row
    # Tiles past this sequence's q_len do no work (the grid covers the longest chunk).
    kv_end = tl.where(tile * BLOCK_M < q_len, tl.minimum(ctx, prefix + (tile + 1) * BLOCK_M), 0)
    kv_start = split * tokens_per_split                     # split-KV: this program's share
    kv_end = tl.minimum(kv_end, kv_start + tokens_per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t0 in range(kv_start, kv_end, BLOCK_N):
        toks = t0 + offs_n
        t_mask = toks < kv_end
        blk = tl.load(BT + b * stride_btb + toks // BLOCK_SIZE, mask=t_mask, other=0).to(tl.int64)
        row = toks % BLOCK_SIZE
        kv_mask = t_mask[:, None] & d_mask[None, :]
        k = tl.load(K + blk[:, None] * stride_kb + row[:, None] * stride_kt + kvh * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + blk[:, None] * stride_vb + row[:, None] * stride_vt + kvh * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(q.dtype))) * qk_scale
        visible = (toks[None, :] <= pos[:, None]) & t_mask[None, :]
        s = tl.where(visible, s, float("-inf"))
        # Under split-KV a row may see nothing yet (m = -inf): subtract 0 then, not -inf, to avoid NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_sub)
        p = tl.math.exp2(s - m_sub[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
        m_i = m_new

    l_safe = tl.where(l_i > 0, l_i, 1.0)
    out = acc * (v_scale / l_safe)[:, None]
    o_mask = m_mask[:, None] & d_mask[None, :]
    rows = q_first + offs_m
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.math.log2(l_safe), float("-inf"))
        tl.store(MID_O + rows[:, None] * stride_mt + h * stride_mh + split * stride_ms + offs_d[None, :],
                 out, mask=o_mask)
        tl.store(MID_LSE + rows * stride_lt + h * stride_lh + split, lse, mask=m_mask)
    else:
        tl.store(Out + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(Out.dtype.element_ty), mask=o_mask)


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor,
                            context_lens: torch.Tensor, max_q_len: int, *,
                            scale: float | None = None, k_scale: float = 1.0, v_scale: float = 1.0,
                            max_context: int | None = None, num_splits: int | None = None,
                            block_m: int | None = None, block_n: int | None = None,
                            num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Causal attention of each sequence's new tokens over its paged prefix and themselves.

    q: [total_new_tokens, num_heads, head_dim] fp16/bf16, sequence s owning rows
    cu_seqlens_q[s]:cu_seqlens_q[s+1] (int32, length num_seqs + 1); context_lens[s] counts the prefix
    plus the new tokens, all already in the cache.  Caches, block tables and scales as in
    `paged_decode_attention`.  Returns [total_new_tokens, num_heads, head_dim] in q's dtype.
    """
    total, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, kv_dim = k_cache.shape
    if kv_dim != head_dim or num_heads % num_kv_heads:
        raise ValueError(f"head shapes do not match: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("head_dim must be the contiguous dimension of q and the caches")
    if scale is None:
        scale = head_dim ** -0.5
    interp = is_interpreting()
    num_seqs = cu_seqlens_q.shape[0] - 1
    sms = 1 if interp else torch.cuda.get_device_properties(q.device).multi_processor_count
    if block_m is None:   # tiny chunks: a 64-row tile would be mostly padding; split-KV adds programs
        block_m = 16 if interp or max_q_len <= 32 else 64
    block_n = block_n or (16 if interp else 64)
    num_tiles = triton.cdiv(max_q_len, block_m)
    if max_context is None:
        max_context = int(context_lens.max())
    if num_splits is None:   # short chunks over long prefixes: too few programs to fill the GPU
        num_splits = choose_num_splits(num_tiles * num_seqs, num_heads, max_context, block_n, sms)
    tokens_per_split = triton.cdiv(triton.cdiv(max_context, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_context, tokens_per_split)
    out = torch.empty_like(q)
    block_d = max(16, triton.next_power_of_2(head_dim))
    split = num_splits > 1
    if split:
        mid_o = torch.empty((total, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((total, num_heads, num_splits), dtype=torch.float32, device=q.device)
        mo_strides, ml_strides = mid_o.stride()[:3], mid_lse.stride()[:2]
    else:
        mid_o, mid_lse, mo_strides, ml_strides = out, out, (0, 0, 0), (0, 0)   # unused placeholders
    _prefill_kernel[(num_tiles * num_splits, num_seqs, num_heads)](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out, mid_o, mid_lse,
        scale * k_scale * LOG2E, v_scale, num_splits, tokens_per_split,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1), *mo_strides, *ml_strides,
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
        COMPUTE=dot_dtype(q.dtype, k_cache.dtype), SPLIT=split, num_warps=num_warps, num_stages=num_stages,
    )
    if split:
        _reduce_kernel[(total, num_heads)](
            mid_o, mid_lse, out, num_splits, *mo_strides, *ml_strides, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_S=max(2, triton.next_power_of_2(num_splits)), num_warps=4,
        )
    return out
