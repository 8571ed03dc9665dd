"""The grids of shapes that calibration times, and the columns of the raw-measurements CSV.

Three sizes: `full` (a few minutes per model on an H100), `quick` (a smoke test on a GPU, ~1 min)
and `interpret` (tiny shapes for the CPU interpreter: the whole pipeline in seconds, timings
meaningless).  Points marked held out are measured but kept out of the fit, so the error reported
on them says how well the fitted formula predicts shapes it has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass

# One row per measurement; components fill the columns that apply to them and leave the rest empty.
CSV_COLUMNS = (
    "component",        # decode | decode_sdpa | decode_tune | prefill | linear | swap
    "kv_dtype",         # auto | fp8 | int8 (auto = the model's dtype)
    "block_size",       # tokens per KV block
    "batch",            # sequences in the call
    "context_len",      # cached tokens per sequence (decode) or prefix + chunk (prefill)
    "q_len",            # new tokens per sequence (prefill chunk)
    "prefix_len",       # cached tokens before the chunk
    "tokens",           # GEMM rows
    "gemm",             # qkv | o | gate_up | down | lm_head
    "direction",        # h2d | d2h
    "num_copies",       # separate memcpy calls (swap)
    "bytes",            # bytes the operation must move at least
    "seconds",          # median, per layer for attention and GEMMs, per call for swap
    "achieved_gb_per_s",
    "frac_hbm_peak",
    "holdout",          # 1 = kept out of the fit, used to report its error
    "config",           # kernel launch configuration
)


@dataclass(frozen=True, slots=True)
class Grid:
    """Shapes to time for one model shard."""

    kv_dtypes: tuple[str, ...]
    block_sizes: tuple[int, ...]
    decode_points: tuple[tuple[int, int], ...]            # (batch, context_len)
    prefill_block_sizes: tuple[int, ...]
    prefill_points: tuple[tuple[int, int], ...]           # (q_len, prefix_len), one sequence
    linear_tokens: tuple[int, ...]
    linear_holdout_tokens: tuple[int, ...]
    swap_block_sizes: tuple[int, ...]
    swap_copies: tuple[int, ...]
    tune_decode: bool = False
    max_decode_tokens: int = 1 << 19                       # cap on batch × context per point


def _decode_points(batches: tuple[int, ...], contexts: tuple[int, ...], cap: int) -> tuple[tuple[int, int], ...]:
    return tuple((b, c) for b in batches for c in contexts if b * c <= cap)


def _prefill_points(q_lens: tuple[int, ...], prefixes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    return tuple((q, p) for q in q_lens for p in prefixes)


def full_grid() -> Grid:
    return Grid(
        kv_dtypes=("auto", "fp8", "int8"),
        block_sizes=(8, 16, 32, 64, 128),
        decode_points=_decode_points((1, 4, 16, 64), (512, 1024, 2048, 4096, 8192, 16384), 1 << 19),
        prefill_block_sizes=(16, 128),
        prefill_points=_prefill_points((16, 128, 512, 1024, 2048, 4096), (0, 1024, 4096, 12288)),
        linear_tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        linear_holdout_tokens=(3, 24, 96, 384, 1536, 6144),
        swap_block_sizes=(8, 16, 32, 64, 128),
        swap_copies=(1, 8, 64, 256),
        tune_decode=True,
    )


def quick_grid() -> Grid:
    return Grid(
        kv_dtypes=("auto", "fp8"),
        block_sizes=(16, 128),
        decode_points=_decode_points((1, 8, 32), (1024, 4096, 16384), 1 << 18),
        prefill_block_sizes=(16,),
        prefill_points=_prefill_points((64, 512, 2048), (0, 2048, 8192)),
        linear_tokens=(1, 8, 64, 256, 1024, 4096),
        linear_holdout_tokens=(32, 2048),
        swap_block_sizes=(16, 128),
        swap_copies=(1, 16, 128),
    )


def interpret_grid() -> Grid:
    return Grid(
        kv_dtypes=("auto", "int8"),
        block_sizes=(8, 16),
        decode_points=((1, 16), (2, 40), (1, 70), (2, 100), (3, 33)),
        prefill_block_sizes=(16,),
        prefill_points=((16, 0), (16, 24), (32, 8), (8, 40), (24, 16)),
        linear_tokens=(1, 4, 16, 64),
        linear_holdout_tokens=(8, 32),
        swap_block_sizes=(8, 16),
        swap_copies=(1, 4, 16),
    )
