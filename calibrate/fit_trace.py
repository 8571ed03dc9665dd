"""A cost profile fitted to a real engine's step times: a calibration source in its own right.

The kernel calibration (`calibrate/fit.py`) times GEMMs and attention kernels one by one and
leaves the engine's own per-step work unmeasured.  An engine trace (`sim/validate/engine_trace.py`)
has the whole step instead: the wall time of each ``LLMEngine.step()`` cycle and the batch shape
that step ran.  Fitting the cost model's terms to those times prices everything the engine does,
scheduler and sampler and Python included, on the machine that ran it.

The model is `sim.cost_model.step_time_s` with every term a step can exercise:

    step_s = overhead + a·T + s_per_seq·D + s_per_kv_token·C + s_per_query_token·P + s_per_pair·W
             + decode intercept·[D > 0] + prefill intercept·[P > 0]

(T = P + D tokens, D decodes with context sum C, P prefill tokens with causal pairs W).  The
columns P and D are fitted separately, non-negative; the smaller of the two per-token costs becomes
the linear table's slope ``a`` and the excess goes to the per-decode or per-prefill-token term, so
the profile reads "every token costs a, a decode costs s_per_seq more".  Ordinary least squares
on seconds (not relative error: the simulator sums step times, so the mean must be right), with
non-negativity (`scipy.optimize.nnls`) on column-scaled features.  Every `holdout_every`-th step is
held out of the fit; R² and relative errors are reported on those steps.
"""

from __future__ import annotations

import datetime as dt
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from calibrate.profile import SCHEMA

#: Feature columns, in order, and where each coefficient goes in the profile.
FEATURES = ("overhead", "prefill_token", "decode_seq", "decode_kv_token", "prefill_pair",
            "decode_intercept", "prefill_intercept")


@dataclass(frozen=True)
class StepShape:
    """The batch shape of one measured step and its duration (seconds)."""

    num_prefill_tokens: int
    num_decode_tokens: int
    decode_ctx_tokens: int
    prefill_pairs: float
    duration_s: float


@dataclass(frozen=True)
class TraceFit:
    """Coefficients (seconds per unit, FEATURES order) and how well they predict."""

    coef: np.ndarray
    r2_train: float
    r2_held_out: float
    median_rel_err: float              # held-out steps
    p90_rel_err: float
    max_rel_err: float
    num_train: int
    num_held_out: int
    mean_step_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"coefficients": {n: float(c) for n, c in zip(FEATURES, self.coef, strict=True)},
                "r2_train": round(self.r2_train, 4), "r2_held_out": round(self.r2_held_out, 4),
                "median_rel_err": round(self.median_rel_err, 4), "p90_rel_err": round(self.p90_rel_err, 4),
                "max_rel_err": round(self.max_rel_err, 4), "train_steps": self.num_train,
                "held_out_steps": self.num_held_out, "mean_step_s": self.mean_step_s}


def features(steps: Sequence[StepShape]) -> np.ndarray:
    """One row per step, FEATURES columns."""
    p = np.array([s.num_prefill_tokens for s in steps], dtype=float)
    d = np.array([s.num_decode_tokens for s in steps], dtype=float)
    c = np.array([s.decode_ctx_tokens for s in steps], dtype=float)
    w = np.array([s.prefill_pairs for s in steps], dtype=float)
    return np.column_stack([np.ones(len(steps)), p, d, c, w, (d > 0).astype(float), (p > 0).astype(float)])


def nnls_seconds(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ||x·c − y||² subject to c ≥ 0; columns scaled to unit max so tiny per-pair costs
    and a millisecond overhead are solved with the same precision."""
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(x / scale, y)
    return np.asarray(coef / scale)


def r_squared(predicted: np.ndarray, measured: np.ndarray) -> float:
    ss_res = float(np.sum((measured - predicted) ** 2))
    ss_tot = float(np.sum((measured - measured.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def fit_steps(steps: Sequence[StepShape], holdout_every: int = 5) -> TraceFit:
    """Fit on all steps but every `holdout_every`-th; report on those (on all, when too few)."""
    if len(steps) < 2:
        raise ValueError(f"need at least 2 measured steps to fit, got {len(steps)}")
    x = features(steps)
    y = np.array([s.duration_s for s in steps], dtype=float)
    held = np.zeros(len(steps), dtype=bool)
    if holdout_every > 1 and len(steps) >= 4 * holdout_every:
        held[holdout_every - 1::holdout_every] = True
    train = ~held
    coef = nnls_seconds(x[train], y[train])
    test = held if held.any() else train
    pred = x @ coef
    rel = np.abs(pred[test] - y[test]) / y[test]
    return TraceFit(coef=coef, r2_train=r_squared(pred[train], y[train]), r2_held_out=r_squared(pred[test], y[test]),
                    median_rel_err=float(np.median(rel)), p90_rel_err=float(np.percentile(rel, 90)),
                    max_rel_err=float(rel.max()), num_train=int(train.sum()), num_held_out=int(held.sum()),
                    mean_step_s=float(y.mean()))


def predict(fit_coef: np.ndarray, steps: Sequence[StepShape]) -> np.ndarray:
    return np.asarray(features(steps) @ fit_coef)


def profile_from_fit(fit: TraceFit, *, block_size: int, kv_dtype: str = "auto", gpu: str, model: str,
                     provenance: dict[str, Any]) -> dict[str, Any]:
    """A `kind: engine-fit` profile dict (docs/profile-schema.md) priced by `sim.cost_model` exactly
    as the fit's linear model."""
    c = dict(zip(FEATURES, (float(v) for v in fit.coef), strict=True))
    per_token = min(c["prefill_token"], c["decode_seq"])
    bs = str(block_size)
    return {
        "schema": SCHEMA, "kind": "engine-fit", "gpu": gpu, "model": model, "tensor_parallel_size": 1,
        "provenance": provenance,
        "step_overhead_s": c["overhead"],
        "linear": {"tokens": [1.0], "seconds": [per_token]},        # one point: a·T, through the origin
        "decode_attention": {kv_dtype: {bs: {"intercept_s": c["decode_intercept"],
                                             "s_per_seq": c["decode_seq"] - per_token,
                                             "s_per_kv_token": c["decode_kv_token"]}}},
        "prefill_attention": {kv_dtype: {bs: {"intercept_s": c["prefill_intercept"],
                                              "s_per_query_token": c["prefill_token"] - per_token,
                                              "s_per_pair": c["prefill_pair"]}}},
        "swap": {"s_per_block_copy": 0.0, "s_per_byte": 0.0},
        "fit_error": {"step": {"median_rel_err": round(fit.median_rel_err, 4), "max_rel_err": round(fit.max_rel_err, 4),
                               "held_out_points": fit.num_held_out}},
        "fit": fit.as_dict(),
    }


def trace_provenance(header: Any, trace_path: str) -> dict[str, Any]:
    """Where an engine-fit profile came from: the trace, vLLM's version, the date, the host."""
    stats = dict(getattr(header, "stats", {}) or {})
    return {"source": "engine trace", "trace": trace_path, "engine": getattr(header, "source", "?"),
            "vllm_version": getattr(header, "vllm_version", None),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host_cpu": stats.get("host_cpu") or platform.processor() or platform.machine(),
            "host": platform.node(), "torch_threads": stats.get("torch_threads"),
            "num_steps": stats.get("num_steps")}
