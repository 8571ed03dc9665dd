"""Assembling, checking and writing a `kind: calibrated` cost profile (docs/profile-schema.md).

The profile JSON and the raw timings CSV are written side by side (`<stem>.json`, `<stem>.csv`),
and the JSON names the CSV in `measurements_csv`, so every coefficient can be traced back to the
measurements it came from.  `validate_profile` checks the schema's structure and signs; it returns
the problems instead of raising, so tests and the CLI can report all of them at once.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calibrate.grid import CSV_COLUMNS

SCHEMA = "pagesim-profile/1"
KINDS = ("roofline", "calibrated", "engine-fit", "constant")
DECODE_KEYS = ("intercept_s", "s_per_seq", "s_per_kv_token")
PREFILL_KEYS = ("intercept_s", "s_per_query_token", "s_per_pair")
ERROR_KEYS = ("median_rel_err", "max_rel_err", "held_out_points")


def build_profile(*, gpu: str, model: str, tp: int, provenance: dict[str, Any],
                  linear: dict[str, list[float]], decode: dict[str, Any], prefill: dict[str, Any],
                  swap: dict[str, float], fit_error: dict[str, Any], csv_name: str) -> dict[str, Any]:
    """A profile dict in schema order.  All-reduce is left out when TP > 1: one GPU cannot time it."""
    profile: dict[str, Any] = {
        "schema": SCHEMA, "kind": "calibrated", "gpu": gpu, "model": model, "tensor_parallel_size": tp,
        "provenance": provenance,
        "step_overhead_s": 0.0,   # scheduler/sampling time is engine-side: not measured by kernels
        "linear": linear, "decode_attention": decode, "prefill_attention": prefill,
    }
    if tp == 1:
        profile["allreduce"] = {"s_per_call": 0.0, "s_per_byte": 0.0}
    profile.update(swap=swap, measurements_csv=csv_name, fit_error=fit_error)
    return profile


def _number(x: Any, nonneg: bool = True) -> bool:
    return (isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
            and (x >= 0 or not nonneg))


def _check_attention(name: str, table: Any, keys: tuple[str, ...], problems: list[str]) -> None:
    if not isinstance(table, dict) or not table:
        problems.append(f"{name}: expected a non-empty mapping kv_dtype -> block_size -> coefficients")
        return
    for dtype, by_bs in table.items():
        if not isinstance(by_bs, dict) or not by_bs:
            problems.append(f"{name}.{dtype}: expected a mapping block_size -> coefficients")
            continue
        for bs, coeffs in by_bs.items():
            where = f"{name}.{dtype}.{bs}"
            if not (isinstance(bs, str) and bs.isdigit() and int(bs) > 0):
                problems.append(f"{where}: block size key must be a positive integer string")
            if not isinstance(coeffs, dict) or set(coeffs) != set(keys):
                problems.append(f"{where}: expected exactly the keys {', '.join(keys)}")
            elif not all(_number(v) for v in coeffs.values()):
                problems.append(f"{where}: coefficients must be finite and >= 0")


def validate_profile(p: Any) -> list[str]:
    """Problems with a calibrated/roofline/engine-fit profile dict; empty when it follows the schema."""
    if not isinstance(p, dict):
        return ["profile: expected a JSON object"]
    problems: list[str] = []
    if p.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}")
    if p.get("kind") not in KINDS:
        problems.append(f"kind: expected one of {', '.join(KINDS)}")
    for key in ("gpu", "model"):
        if not isinstance(p.get(key), str) or not p.get(key):
            problems.append(f"{key}: expected a non-empty string")
    tp = p.get("tensor_parallel_size")
    if not (isinstance(tp, int) and not isinstance(tp, bool) and tp >= 1):
        problems.append("tensor_parallel_size: expected an integer >= 1")
    if not isinstance(p.get("provenance"), dict):
        problems.append("provenance: expected a mapping")
    if not _number(p.get("step_overhead_s")):
        problems.append("step_overhead_s: expected a number >= 0")
    lin = p.get("linear")
    if not isinstance(lin, dict) or set(lin) != {"tokens", "seconds"}:
        problems.append("linear: expected {'tokens': [...], 'seconds': [...]}")
    else:
        xs, ys = lin["tokens"], lin["seconds"]
        if not (isinstance(xs, list) and isinstance(ys, list) and xs and len(xs) == len(ys)):
            problems.append("linear: tokens and seconds must be non-empty lists of equal length")
        elif not all(_number(v) for v in xs + ys) or any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            problems.append("linear: tokens must increase strictly; all values finite and >= 0")
    _check_attention("decode_attention", p.get("decode_attention"), DECODE_KEYS, problems)
    _check_attention("prefill_attention", p.get("prefill_attention"), PREFILL_KEYS, problems)
    for key, want in (("allreduce", ("s_per_call", "s_per_byte")), ("swap", ("s_per_block_copy", "s_per_byte"))):
        val = p.get(key)
        if val is None and key == "allreduce":
            continue
        if not isinstance(val, dict) or set(val) != set(want) or not all(_number(v) for v in val.values()):
            problems.append(f"{key}: expected {{{', '.join(want)}}} with finite numbers >= 0")
    if "measurements_csv" in p and not isinstance(p["measurements_csv"], str):
        problems.append("measurements_csv: expected a relative path string")
    for comp, err in (p.get("fit_error") or {}).items():
        if not isinstance(err, dict) or set(err) != set(ERROR_KEYS) or not all(_number(v) for v in err.values()):
            problems.append(f"fit_error.{comp}: expected {', '.join(ERROR_KEYS)} as numbers >= 0")
    return problems


def write_profile(out_dir: Path, stem: str, profile: dict[str, Any], rows: Sequence[dict[str, Any]]) -> Path:
    """Write `<stem>.json` and `<stem>.csv` into out_dir; returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), extrasaction="raise")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(profile, indent=2) + "\n")
    return path
