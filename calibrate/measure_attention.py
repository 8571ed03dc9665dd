"""Timing the paged attention kernels over a grid of batch shapes, per layer.

Decode: for each (KV dtype, block size) one shuffled block pool is filled with random K/V, and
every (batch, context) point draws its sequences' blocks from it at random, so reads are scattered
the way a long-running server's are.  Bandwidth counts the bytes the kernel must read at least (the
K and V of every context token, plus q and the output); torch SDPA on the same KV, pre-gathered
into contiguous tensors, is timed beside it as the yardstick a paged kernel has to match.
Prefill: one sequence with a chunk of q_len new tokens behind prefix_len cached ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from calibrate.grid import Grid
from calibrate.kernels.decode import paged_decode_attention
from calibrate.kernels.prefill import paged_prefill_attention
from calibrate.kernels.reference import TORCH_KV_DTYPES, quantize
from calibrate.models import ShardShape
from calibrate.timing import Timer

Row = dict[str, Any]
DecodeConfig = dict[str, int]

# Launch configurations tried by the decode tuning step (block_n tokens per tile, warps, stages).
TUNE_CONFIGS: tuple[DecodeConfig, ...] = tuple(
    {"block_n": n, "num_warps": w, "num_stages": s}
    for n, w, s in ((32, 4, 2), (32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3),
                    (128, 4, 3), (128, 4, 4), (128, 8, 2), (128, 8, 3), (256, 8, 2), (32, 2, 4))
)


def cache_dtype(shape: ShardShape, kv_dtype: str) -> str:
    """The kernel-level dtype behind a profile KV dtype name ('auto' is the model's dtype)."""
    return shape.dtype if kv_dtype == "auto" else kv_dtype


def kv_bytes_per_token(shape: ShardShape, kv_dtype: str) -> int:
    """Bytes of K plus V of one token in one layer of this shard."""
    elem = TORCH_KV_DTYPES[cache_dtype(shape, kv_dtype)].itemsize
    return 2 * shape.num_kv_heads * shape.head_dim * elem


class BlockPool:
    """Random K/V blocks of one dtype and block size, and random block tables drawn from them."""

    def __init__(self, num_tokens: int, block_size: int, shape: ShardShape, kv_dtype: str, device: str):
        self.block_size = block_size
        self.num_blocks = -(-num_tokens // block_size) + 64
        dims = (self.num_blocks, block_size, shape.num_kv_heads, shape.head_dim)
        self.k, self.k_scale = quantize(torch.randn(dims, device=device), cache_dtype(shape, kv_dtype))
        self.v, self.v_scale = quantize(torch.randn(dims, device=device), cache_dtype(shape, kv_dtype))
        self.device = device

    def tables(self, context_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block tables (shuffled, distinct blocks per sequence) and context lengths, as int32."""
        per_seq = [-(-n // self.block_size) for n in context_lens]
        width = max(per_seq)
        ids = torch.randperm(self.num_blocks, device=self.device)[: len(context_lens) * width]
        table = ids.view(len(context_lens), width).to(torch.int32)
        lens = torch.tensor(context_lens, dtype=torch.int32, device=self.device)
        return table, lens


def _point(component: str, seconds: float, nbytes: int, peak: float, **cols: Any) -> Row:
    gbps = nbytes / seconds / 1e9
    return {"component": component, "seconds": seconds, "bytes": nbytes,
            "achieved_gb_per_s": round(gbps, 2), "frac_hbm_peak": round(gbps * 1e9 / peak, 4), **cols}


def _decode_fn(pool: BlockPool, shape: ShardShape, batch: int, ctx: int,
               cfg: DecodeConfig) -> tuple[Callable[[], Any], int]:
    table, lens = pool.tables([ctx] * batch)
    q = torch.randn(batch, shape.num_heads, shape.head_dim, device=pool.device).to(TORCH_KV_DTYPES[shape.dtype])
    nbytes = pool.k.element_size() * 2 * batch * ctx * shape.num_kv_heads * shape.head_dim + 2 * q.numel() * 2

    def fn() -> torch.Tensor:
        return paged_decode_attention(q, pool.k, pool.v, table, lens, k_scale=pool.k_scale,
                                      v_scale=pool.v_scale, max_context=ctx, **cfg)
    return fn, nbytes


def tune_decode(shape: ShardShape, timer: Timer, peak: float, kv_dtype: str = "auto",
                points: tuple[tuple[int, int], ...] = ((32, 4096), (4, 16384))) -> tuple[DecodeConfig, list[Row]]:
    """Pick the launch configuration with the least total time over a few long-context points."""
    pool = BlockPool(max(b * c for b, c in points), 16, shape, kv_dtype, timer.device)
    rows: list[Row] = []
    best: tuple[float, DecodeConfig] | None = None
    for cfg in TUNE_CONFIGS:
        total = 0.0
        for batch, ctx in points:
            fn, nbytes = _decode_fn(pool, shape, batch, ctx, cfg)
            t = timer.median_s_graphed(fn)
            total += t
            rows.append(_point("decode_tune", t, nbytes, peak, kv_dtype=kv_dtype, block_size=16, batch=batch,
                               context_len=ctx, config=_cfg_str(cfg)))
        if best is None or total < best[0]:
            best = (total, cfg)
    assert best is not None
    return best[1], rows


def _cfg_str(cfg: DecodeConfig) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(cfg.items()))


def measure_decode(shape: ShardShape, grid: Grid, timer: Timer, peak: float,
                   configs: dict[str, DecodeConfig]) -> list[Row]:
    """Per-layer decode kernel time at every grid point, plus torch SDPA on gathered KV (auto dtype).

    `configs` holds the launch configuration per KV dtype (kernel defaults where missing)."""
    rows: list[Row] = []
    max_tokens = max(b * c for b, c in grid.decode_points)
    for kv_dtype in grid.kv_dtypes:
        cfg = configs.get(kv_dtype, {})
        for bs in grid.block_sizes:
            pool = BlockPool(max_tokens + bs * max(b for b, _ in grid.decode_points), bs, shape, kv_dtype,
                             timer.device)
            for i, (batch, ctx) in enumerate(grid.decode_points):
                fn, nbytes = _decode_fn(pool, shape, batch, ctx, cfg)
                rows.append(_point("decode", timer.median_s_graphed(fn), nbytes, peak, kv_dtype=kv_dtype,
                                   block_size=bs, batch=batch, context_len=ctx, holdout=int(i % 4 == 2),
                                   config=_cfg_str(cfg)))
            if kv_dtype == "auto" and bs == grid.block_sizes[min(1, len(grid.block_sizes) - 1)]:
                rows += _measure_sdpa(pool, shape, grid, timer, peak)
            del pool
    return rows


def _measure_sdpa(pool: BlockPool, shape: ShardShape, grid: Grid, timer: Timer, peak: float) -> list[Row]:
    """torch SDPA over the same KV gathered into contiguous [batch, kv_heads, ctx, head_dim] tensors."""
    rows: list[Row] = []
    for batch, ctx in grid.decode_points:
        table, _ = pool.tables([ctx] * batch)
        idx = table.long()
        k = pool.k[idx].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
        v = pool.v[idx].flatten(1, 2)[:, :ctx].transpose(1, 2).contiguous()
        q = torch.randn(batch, shape.num_heads, 1, shape.head_dim, device=pool.device).to(k.dtype)
        nbytes = 2 * k.numel() * k.element_size() + 2 * q.numel() * 2

        def fn(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        try:
            fn()
        except (RuntimeError, TypeError):   # no GQA support in this backend: repeat KV heads instead
            group = shape.num_heads // shape.num_kv_heads
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)

            def fn(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v)
        rows.append(_point("decode_sdpa", timer.median_s_graphed(fn), nbytes, peak, kv_dtype="auto",
                           block_size=pool.block_size, batch=batch, context_len=ctx, config="torch sdpa"))
        del k, v
    return rows


def measure_prefill(shape: ShardShape, grid: Grid, timer: Timer, peak: float) -> list[Row]:
    """Per-layer chunked-prefill kernel time for one sequence per (q_len, prefix_len) point."""
    rows: list[Row] = []
    qdt = TORCH_KV_DTYPES[shape.dtype]
    max_tokens = max(q + p for q, p in grid.prefill_points)
    for kv_dtype in grid.kv_dtypes:
        for bs in grid.prefill_block_sizes:
            pool = BlockPool(max_tokens, bs, shape, kv_dtype, timer.device)
            for i, (q_len, prefix) in enumerate(grid.prefill_points):
                table, lens = pool.tables([q_len + prefix])   # max_context given: no sync in a graph
                q = torch.randn(q_len, shape.num_heads, shape.head_dim, device=timer.device).to(qdt)
                cu = torch.tensor([0, q_len], dtype=torch.int32, device=timer.device)

                def fn(q: torch.Tensor = q, table: torch.Tensor = table, lens: torch.Tensor = lens,
                       cu: torch.Tensor = cu, q_len: int = q_len, pool: BlockPool = pool,
                       ctx_len: int = q_len + prefix) -> torch.Tensor:
                    return paged_prefill_attention(q, pool.k, pool.v, table, cu, lens, q_len,
                                                   k_scale=pool.k_scale, v_scale=pool.v_scale,
                                                   max_context=ctx_len)
                nbytes = (q_len + prefix) * kv_bytes_per_token(shape, kv_dtype) + 2 * q.numel() * 2
                rows.append(_point("prefill", timer.median_s_graphed(fn), nbytes, peak, kv_dtype=kv_dtype,
                                   block_size=bs, batch=1, context_len=q_len + prefix, q_len=q_len,
                                   prefix_len=prefix, holdout=int(i % 4 == 2)))
            del pool
    return rows
