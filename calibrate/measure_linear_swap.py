"""Timing the model's weight GEMMs and host<->device KV block copies.

GEMMs: every linear layer of one transformer layer of the shard (qkv, o, gate_up, down) and the LM
head, as `F.linear` (cuBLAS) on the model's dtype, for a range of batched token counts.  Small
batches are bound by reading the weights, large ones by FLOPs; do_bench flushes L2 between runs, so
the weights come from HBM as they do in a real step.

Swap: vLLM moves a KV block between GPU and pinned host memory as one memcpy per layer and per K/V
tensor, i.e. 2 × layers copies of block_size × kv_heads × head_dim elements each.  Timing n such
copies for several block sizes separates the fixed cost of a copy from the cost per byte, which is
what makes small block sizes expensive to swap.  The copies are captured in a CUDA graph when
possible, so Python's own launch overhead stays out of the number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from calibrate.grid import Grid
from calibrate.kernels.reference import TORCH_KV_DTYPES
from calibrate.models import ShardShape
from calibrate.timing import Timer

Row = dict[str, Any]


def measure_linear(shape: ShardShape, grid: Grid, timer: Timer, peak: float) -> list[Row]:
    """Seconds of each GEMM (one layer's worth; lm_head once) at every token count."""
    rows: list[Row] = []
    dtype = TORCH_KV_DTYPES[shape.dtype]
    if timer.interpret:
        dtype = torch.float32   # CPU bf16 GEMMs are slow and meaningless here anyway
    for gemm, (n_in, n_out) in shape.gemm_shapes().items():
        w = torch.randn(n_out, n_in, device=timer.device).to(dtype) * n_in ** -0.5
        for holdout, tokens_list in ((0, grid.linear_tokens), (1, grid.linear_holdout_tokens)):
            for tokens in tokens_list:
                x = torch.randn(tokens, n_in, device=timer.device).to(dtype)
                t = timer.median_s_graphed(lambda x=x, w=w: F.linear(x, w))
                nbytes = (w.numel() + x.numel() + tokens * n_out) * w.element_size()
                gbps = nbytes / t / 1e9
                rows.append({"component": "linear", "gemm": gemm, "tokens": tokens, "seconds": t,
                             "bytes": nbytes, "achieved_gb_per_s": round(gbps, 2),
                             "frac_hbm_peak": round(gbps * 1e9 / peak, 4), "holdout": holdout,
                             "config": f"{n_in}x{n_out} {str(dtype).removeprefix('torch.')}"})
        del w
    return rows


def _copy_fn(dst: torch.Tensor, src: torch.Tensor, n: int, use_graph: bool) -> tuple[Callable[[], Any], str]:
    """A callable that does n separate block copies src[i] -> dst[i] (a CUDA graph replay if possible)."""
    def eager() -> None:
        for i in range(n):
            dst[i].copy_(src[i], non_blocking=True)
    if not use_graph:
        return eager, "eager loop"
    try:
        eager()                     # warm up outside capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            eager()
        return g.replay, "cuda graph of memcpys"
    except RuntimeError:
        torch.cuda.synchronize()
        return eager, "eager loop"


def measure_swap(shape: ShardShape, grid: Grid, timer: Timer) -> list[Row]:
    """Seconds for n separate one-layer K (or V) block copies, host->device and device->host."""
    rows: list[Row] = []
    dtype = TORCH_KV_DTYPES[shape.dtype]
    n_max = max(grid.swap_copies)
    for bs in grid.swap_block_sizes:
        dims = (n_max, bs, shape.num_kv_heads, shape.head_dim)
        host = torch.randn(dims).to(dtype)
        if not timer.interpret:
            host = host.pin_memory()
        dev = torch.randn(dims, device=timer.device).to(dtype)
        block_bytes = host[0].numel() * host.element_size()
        for n in grid.swap_copies:
            for direction, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
                fn, how = _copy_fn(dst, src, n, use_graph=not timer.interpret)
                t = min(timer.median_s(fn), timer.median_s(fn))   # host-link timings are noisy
                rows.append({"component": "swap", "block_size": bs, "direction": direction, "num_copies": n,
                             "bytes": n * block_bytes, "seconds": t,
                             "achieved_gb_per_s": round(n * block_bytes / t / 1e9, 3),
                             "holdout": int(len(rows) % 4 == 2),
                             "config": how})
    return rows
