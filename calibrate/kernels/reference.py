"""Plain PyTorch reference for paged attention, KV quantization and random paged caches.

The reference gathers each sequence's K and V out of the paged cache through its block table,
dequantizes them (value × per-tensor scale), repeats KV heads for GQA and runs softmax attention
in float32.  It is slow and obvious on purpose: the Triton kernels are checked against it, and the
timing harness builds its caches with `make_paged_kv` so both see the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0   # largest finite float8 e4m3 (fn) value
INT8_MAX = 127.0

TORCH_KV_DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8": torch.float8_e4m3fn,
    "int8": torch.int8,
}


def quantize(x: torch.Tensor, kv_dtype: str) -> tuple[torch.Tensor, float]:
    """Cast `x` to the cache dtype; fp8 and int8 get one per-tensor scale (x ≈ stored × scale)."""
    target = TORCH_KV_DTYPES[kv_dtype]
    if kv_dtype in ("fp16", "bf16"):
        return x.to(target), 1.0
    amax = float(x.abs().max().clamp(min=1e-6))
    if kv_dtype == "fp8":
        scale = amax / FP8_MAX
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(target), scale
    scale = amax / INT8_MAX
    return (x.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(target), scale


@dataclass
class PagedKV:
    """One layer's paged cache and the block tables that map sequences onto it."""

    k_cache: torch.Tensor        # [num_blocks, block_size, num_kv_heads, head_dim], cache dtype
    v_cache: torch.Tensor
    block_tables: torch.Tensor   # [num_seqs, max_blocks_per_seq] int32 physical block ids
    context_lens: torch.Tensor   # [num_seqs] int32 tokens cached per sequence
    k_scale: float = 1.0         # per-tensor dequantization scales (1.0 for fp16/bf16)
    v_scale: float = 1.0


def make_paged_kv(context_lens: list[int], block_size: int, num_kv_heads: int, head_dim: int,
                  kv_dtype: str, device: str | torch.device = "cpu", shuffle: bool = True,
                  generator: torch.Generator | None = None, spare_blocks: int = 0) -> PagedKV:
    """Random K/V for sequences of the given lengths, blocks scattered over the pool when `shuffle`.

    Unused block-table slots point at block 0 (as vLLM pads them); the kernels must never read them.
    """
    blocks_per_seq = [-(-n // block_size) for n in context_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=generator, device="cpu" if generator is not None else device)
    v = torch.randn(shape, generator=generator, device="cpu" if generator is not None else device)
    k_q, k_scale = quantize(k.to(device), kv_dtype)
    v_q, v_scale = quantize(v.to(device), kv_dtype)
    ids = torch.randperm(num_blocks, generator=generator) if shuffle else torch.arange(num_blocks)
    table = torch.zeros((len(context_lens), max(blocks_per_seq + [1])), dtype=torch.int32)
    pos = 0
    for i, nb in enumerate(blocks_per_seq):
        table[i, :nb] = ids[pos:pos + nb].to(torch.int32)
        pos += nb
    lens = torch.tensor(context_lens, dtype=torch.int32)
    return PagedKV(k_q, v_q, table.to(device), lens.to(device), k_scale, v_scale)


def gather_kv(kv: PagedKV, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence `seq`'s dequantized K and V as float32 `[context_len, num_kv_heads, head_dim]`."""
    n = int(kv.context_lens[seq])
    bs = kv.k_cache.shape[1]
    ids = kv.block_tables[seq, : -(-n // bs)].long()
    k = kv.k_cache[ids].flatten(0, 1)[:n].float() * kv.k_scale
    v = kv.v_cache[ids].flatten(0, 1)[:n].float() * kv.v_scale
    return k, v


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
            first_pos: int) -> torch.Tensor:
    """q [n_q, H, D] at absolute positions first_pos.. against k/v [n_kv, KVH, D], causal."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    q_pos = torch.arange(q.shape[0], device=q.device)[:, None] + first_pos
    k_pos = torch.arange(k.shape[0], device=q.device)[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v)


def ref_decode(q: torch.Tensor, kv: PagedKV, scale: float) -> torch.Tensor:
    """Decode reference: q [num_seqs, H, D] (one new token each) -> float32 [num_seqs, H, D]."""
    outs = []
    for s in range(q.shape[0]):
        k, v = gather_kv(kv, s)
        outs.append(_attend(q[s:s + 1], k, v, scale, first_pos=k.shape[0] - 1)[0])
    return torch.stack(outs)


def ref_prefill(q: torch.Tensor, cu_seqlens_q: list[int], kv: PagedKV, scale: float) -> torch.Tensor:
    """Chunked-prefill reference: the new tokens of each sequence are its last q_len cached tokens."""
    outs = []
    for s in range(len(cu_seqlens_q) - 1):
        k, v = gather_kv(kv, s)
        qs = q[cu_seqlens_q[s]:cu_seqlens_q[s + 1]]
        outs.append(_attend(qs, k, v, scale, first_pos=k.shape[0] - qs.shape[0]))
    return torch.cat(outs)
