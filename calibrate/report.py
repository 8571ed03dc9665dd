"""Human-readable summaries of a calibration run: decode bandwidth against HBM peak, and fit errors.

Decode attention is memory bound, so its quality is the fraction of HBM peak it reaches.  For each
(KV dtype, block size) and context length the table shows the point with the most bytes to read
(the largest batch measured at that context), next to torch SDPA on the same KV pre-gathered into
contiguous tensors — what a paged kernel would cost if paging were free.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


def _largest_per_context(rows: Sequence[Row]) -> dict[int, Row]:
    best: dict[int, Row] = {}
    for r in rows:
        ctx = int(r["context_len"])
        if ctx not in best or r["bytes"] > best[ctx]["bytes"]:
            best[ctx] = r
    return best


def bandwidth_table(rows: Sequence[Row]) -> str:
    """One line per (kv_dtype, block_size) plus torch SDPA: 'GB/s (fraction of peak) @batch' per context."""
    groups: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r["component"] == "decode":
            groups[(str(r["kv_dtype"]), f"bs={r['block_size']}")].append(r)
        elif r["component"] == "decode_sdpa":
            groups[("torch-sdpa", "gathered")].append(r)
    if not groups:
        return "(no decode measurements)"
    contexts = sorted({int(r["context_len"]) for g in groups.values() for r in g})
    head = f"{'kv_dtype':<11}{'block':<10}" + "".join(f"{'ctx ' + str(c):>22}" for c in contexts)
    lines = [head]
    for (dtype, bs), group in sorted(groups.items(), key=lambda kv: (kv[0][0] == "torch-sdpa", kv[0])):
        best = _largest_per_context(group)
        cells = []
        for c in contexts:
            r = best.get(c)
            cells.append(f"{r['achieved_gb_per_s']:7.0f} ({100 * r['frac_hbm_peak']:3.0f}%) @{r['batch']:<3}"
                         if r else f"{'-':>20}")
        lines.append(f"{dtype:<11}{bs:<10}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines)


def bandwidth_summary(rows: Sequence[Row], min_context: int = 4096, min_batch: int = 16) -> dict[str, Any]:
    """Fractions of HBM peak at long context and large batch, per KV dtype, for the provenance."""
    out: dict[str, Any] = {}
    for comp, key in (("decode", None), ("decode_sdpa", "torch-sdpa")):
        by: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            if r["component"] == comp and int(r["context_len"]) >= min_context and int(r["batch"]) >= min_batch:
                by[key or str(r["kv_dtype"])].append(float(r["frac_hbm_peak"]))
        for name, fr in by.items():
            out[name] = {"median_frac_hbm_peak": round(statistics.median(fr), 3),
                         "max_frac_hbm_peak": round(max(fr), 3), "points": len(fr)}
    return {f"context>={min_context}, batch>={min_batch}": out}


def fit_error_lines(fit_error: dict[str, dict[str, float | int]]) -> str:
    lines = [f"{'component':<32}{'median err':>12}{'max err':>10}{'held out':>10}"]
    for comp, e in fit_error.items():
        lines.append(f"{comp:<32}{100 * e['median_rel_err']:11.1f}%{100 * e['max_rel_err']:9.1f}%"
                     f"{e['held_out_points']:>10}")
    return "\n".join(lines)
