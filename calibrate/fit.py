"""Fitting raw timings into the cost-profile formulas of docs/profile-schema.md.

Every component is a small linear model in features of the batch (intercept, sequences, KV tokens,
causal pairs, copies, bytes).  Coefficients are found by non-negative least squares on *relative*
error — timings span four orders of magnitude, and a 10 µs step mispredicted by 10 µs matters as
much as a 10 ms one mispredicted by 10 ms — solved exactly by trying every support set (at most
three coefficients).  Points flagged `holdout` are left out of the fit, and the fit's median and
worst relative error on them is reported; with no held-out points the in-sample error is reported
and `held_out_points` is 0.  Per-layer kernel times are multiplied by the number of layers, since a
profile prices whole steps.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

Row = dict[str, Any]
ErrorSummary = dict[str, float | int]


def nnls_relative(features: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """argmin_c Σ ((features·c − seconds) / seconds)² subject to c ≥ 0."""
    a = features / seconds[:, None]
    col_scale = np.abs(a).max(axis=0)
    col_scale[col_scale == 0] = 1.0
    a = a / col_scale
    b = np.ones(len(seconds))
    best: tuple[float, np.ndarray] | None = None
    k = a.shape[1]
    for support in itertools.product((False, True), repeat=k):
        cols = [i for i in range(k) if support[i]]
        if not cols:
            continue
        sub, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (sub < 0).any():
            continue
        c = np.zeros(k)
        c[cols] = sub
        resid = float(np.sum((a @ c - b) ** 2))
        if best is None or resid < best[0]:
            best = (resid, c)
    if best is None:  # unreachable: a single column always has a non-negative solution for y > 0
        raise ValueError("no non-negative fit")
    return best[1] / col_scale


def error_summary(predicted: np.ndarray, measured: np.ndarray, held_out: bool) -> ErrorSummary:
    rel = np.abs(predicted - measured) / measured
    return {"median_rel_err": round(float(np.median(rel)), 4) if len(rel) else 0.0,
            "max_rel_err": round(float(np.max(rel)), 4) if len(rel) else 0.0,
            "held_out_points": int(len(rel)) if held_out else 0}


def fit_rows(rows: Sequence[Row], features: Any, scale: float) -> tuple[np.ndarray, ErrorSummary]:
    """Fit `scale × seconds` on features(row) over the training rows; error on the held-out ones."""
    x = np.array([features(r) for r in rows], dtype=float)
    y = np.array([r["seconds"] * scale for r in rows], dtype=float)
    test = np.array([bool(r.get("holdout")) for r in rows])
    train = ~test
    if train.sum() < x.shape[1] + 1:  # too few points to hold any out
        train, test = np.ones(len(rows), bool), np.zeros(len(rows), bool)
    coef = nnls_relative(x[train], y[train])
    held = bool(test.any())
    sel = test if held else train
    return coef, error_summary(x[sel] @ coef, y[sel], held)


def _pooled(errors: list[tuple[np.ndarray, np.ndarray]]) -> ErrorSummary:
    """One summary over several groups' (predicted, measured) held-out points."""
    if not errors:
        return error_summary(np.zeros(0), np.zeros(0), False)
    return error_summary(np.concatenate([p for p, _ in errors]), np.concatenate([m for _, m in errors]), True)


def _grouped(rows: Sequence[Row], component: str) -> dict[tuple[str, int], list[Row]]:
    groups: dict[tuple[str, int], list[Row]] = defaultdict(list)
    for r in rows:
        if r["component"] == component:
            groups[(str(r["kv_dtype"]), int(r["block_size"]))].append(r)
    return groups


def _attention(rows: Sequence[Row], component: str, num_layers: int, names: tuple[str, str, str],
               features: Any) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, ErrorSummary]]:
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    errors: dict[str, ErrorSummary] = {}
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    for (dtype, bs), group in sorted(_grouped(rows, component).items()):
        coef, err = fit_rows(group, features, num_layers)
        table[dtype][str(bs)] = {n: float(c) for n, c in zip(names, coef, strict=True)}
        key = f"{'decode' if component == 'decode' else 'prefill'}_attention"
        errors[f"{key}.{dtype}.{bs}"] = err
        held = [r for r in group if r.get("holdout")]
        if err["held_out_points"]:
            x = np.array([features(r) for r in held], dtype=float)
            pooled.append((x @ coef, np.array([r["seconds"] * num_layers for r in held])))
    key = "decode_attention" if component == "decode" else "prefill_attention"
    return dict(table), {key: _pooled(pooled), **errors}


def decode_features(r: Row) -> list[float]:
    """intercept, decode sequences, Σ context tokens."""
    return [1.0, float(r["batch"]), float(r["batch"]) * float(r["context_len"])]


def prefill_features(r: Row) -> list[float]:
    """intercept, new tokens, causal pairs Σ q·(prefix + (q+1)/2)."""
    q, p, b = float(r["q_len"]), float(r["prefix_len"]), float(r["batch"])
    return [1.0, b * q, b * q * (p + (q + 1) / 2)]


def fit_decode(rows: Sequence[Row], num_layers: int) -> tuple[dict[str, Any], dict[str, ErrorSummary]]:
    return _attention(rows, "decode", num_layers, ("intercept_s", "s_per_seq", "s_per_kv_token"),
                      decode_features)


def fit_prefill(rows: Sequence[Row], num_layers: int) -> tuple[dict[str, Any], dict[str, ErrorSummary]]:
    return _attention(rows, "prefill", num_layers, ("intercept_s", "s_per_query_token", "s_per_pair"),
                      prefill_features)


def interp_linear(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
    """Piecewise-linear interpolation with linear extrapolation past either end (as the simulator does)."""
    if len(xs) == 1:
        return float(ys[0])
    i = int(np.clip(np.searchsorted(xs, x) - 1, 0, len(xs) - 2))
    return float(ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i]))


def fit_linear(rows: Sequence[Row], num_layers: int) -> tuple[dict[str, list[float]], dict[str, ErrorSummary]]:
    """Step GEMM time per token count: layers × (qkv + o + gate_up + down) + lm_head."""
    totals: dict[tuple[int, int], float] = defaultdict(float)
    for r in rows:
        if r["component"] == "linear":
            mult = 1 if r["gemm"] == "lm_head" else num_layers
            totals[(int(r.get("holdout") or 0), int(r["tokens"]))] += mult * float(r["seconds"])
    train = sorted((t, s) for (h, t), s in totals.items() if not h)
    xs, ys = [float(t) for t, _ in train], [s for _, s in train]
    test = sorted((t, s) for (h, t), s in totals.items() if h)
    held = bool(test)
    pts = test if held else train
    pred = np.array([interp_linear(t, xs, ys) for t, _ in pts])
    return {"tokens": xs, "seconds": ys}, {"linear": error_summary(pred, np.array([s for _, s in pts]), held)}


def swap_features(r: Row) -> list[float]:
    return [float(r["num_copies"]), float(r["bytes"])]


def fit_swap(rows: Sequence[Row], num_layers: int) -> tuple[dict[str, float], dict[str, ErrorSummary]]:
    """Per copy and per byte, both directions pooled; a KV block of all layers is 2 × layers copies."""
    group = [r for r in rows if r["component"] == "swap"]
    (s_per_copy, s_per_byte), err = fit_rows(group, swap_features, 1.0)
    return {"s_per_block_copy": float(2 * num_layers * s_per_copy), "s_per_byte": float(s_per_byte)}, {"swap": err}
