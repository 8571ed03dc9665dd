"""Measured (a real engine) against simulated (pagesim with the fitted profile): schedule and latency.

Two comparisons, pure functions over tables:

* `compare_steps`: the i-th engine step against pagesim's i-th step: prefill tokens, decode tokens,
  running, waiting, preemptions exactly, KV usage within 1e-9.  With every request at t = 0 the
  schedule does not depend on step times, so the two sequences must be identical; with timed
  arrivals they may drift apart and the agreement is reported, not required.
* `compare_latency`: TTFT, TPOT, ITL, E2EL at p50/p90/p99 and output throughput, side by side with
  relative errors (simulated / measured - 1).  TTFT and TPOT p50 (5 %) and p99 (10 %) and
  throughput (5 %) have tolerances; the rest is reported.  Definitions are `vllm bench serve`'s
  (sim/metrics.py): TTFT = first token - send; TPOT = (E2EL - TTFT) / (tokens - 1); ITL = every
  gap between a request's tokens; throughput = output tokens / (last token - first send).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .engine_trace import EngineStep, RequestRecord

METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50, 90, 99)
#: (metric, percentile or None) -> allowed |relative error|
TOLERANCES: dict[tuple[str, int | None], float] = {
    ("ttft", 50): 0.05, ("ttft", 99): 0.10, ("tpot", 50): 0.05, ("tpot", 99): 0.10, ("output_throughput", None): 0.05}
STEP_FIELDS = ("num_prefill_tokens", "num_decode_tokens", "num_running", "num_waiting", "num_preempted")


@dataclass(frozen=True)
class Latencies:
    """One side's request-level figures: per-request samples (seconds) and the throughput."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray
    e2el_s: np.ndarray
    itl_s: np.ndarray                    # every gap, all requests pooled
    output_throughput: float             # tokens / s
    num_requests: int
    itl_percentiles_ms: dict[int, float] | None = None   # when only percentiles are known (pagesim's weighted ITL)
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile_ms(self, metric: str, q: int) -> float:
        if metric == "itl" and self.itl_percentiles_ms is not None:
            return float(self.itl_percentiles_ms[q])
        values = getattr(self, f"{metric}_s")
        return float(np.percentile(values, q) * 1000.0) if values.size else float("nan")


def latencies_from_requests(requests: Sequence[RequestRecord]) -> Latencies:
    """A real engine's figures from its per-request token times."""
    done = [r for r in requests if r.token_s]
    ttft = np.array([r.token_s[0] - r.arrival_s for r in done])
    e2el = np.array([r.token_s[-1] - r.arrival_s for r in done])
    n = np.array([r.output_tokens for r in done])
    multi = n > 1
    tpot = (e2el[multi] - ttft[multi]) / (n[multi] - 1)
    itl = np.concatenate([np.diff(r.token_s) for r in done]) if done else np.zeros(0)
    span = max(r.token_s[-1] for r in done) - min(r.arrival_s for r in done) if done else 0.0
    return Latencies(ttft, tpot, e2el, itl, float(n.sum() / span) if span > 0 else 0.0, len(done))


def latencies_from_bench(ttfts: Sequence[float] | np.ndarray, itls: Sequence[Sequence[float]],
                         latencies: Sequence[float] | np.ndarray, output_lens: Sequence[int] | np.ndarray,
                         duration_s: float) -> Latencies:
    """Figures from `vllm bench serve --save-detailed` columns (successful requests only)."""
    ttft, e2el = np.asarray(ttfts, float), np.asarray(latencies, float)
    n = np.asarray(output_lens, int)
    multi = n > 1
    tpot = (e2el[multi] - ttft[multi]) / (n[multi] - 1)
    itl = np.concatenate([np.asarray(x, float) for x in itls]) if len(itls) else np.zeros(0)
    return Latencies(ttft, tpot, e2el, itl, float(n.sum() / duration_s) if duration_s > 0 else 0.0, len(ttft))


def latencies_from_run(requests: pd.DataFrame, summary: dict[str, Any]) -> Latencies:
    """pagesim's figures from `RunResult.requests` and `.summary` (ITL percentiles from the summary:
    pagesim keeps ITL as weighted gaps, not one sample per token)."""
    done = requests[requests["measured"] & requests["finish_s"].notna()]
    tpot = done["tpot_s"].to_numpy()
    itl = {q: float(summary[f"p{q}_itl_ms"]) for q in PERCENTILES}
    return Latencies(done["ttft_s"].to_numpy(), tpot[~np.isnan(tpot)], done["e2el_s"].to_numpy(), np.zeros(0),
                     float(summary.get("output_throughput") or 0.0), len(done), itl)


def rel_err(simulated: float, measured: float) -> float:
    return simulated / measured - 1.0 if measured else (0.0 if simulated == measured else float("inf"))


def compare_latency(measured: Latencies, simulated: Latencies,
                    tolerances: dict[tuple[str, int | None], float] | None = None) -> pd.DataFrame:
    """One row per figure: measured, simulated, relative error, tolerance (NaN: reported only), ok."""
    tol = TOLERANCES if tolerances is None else tolerances
    rows = []
    for metric in METRICS:
        for q in PERCENTILES:
            m, s = measured.percentile_ms(metric, q), simulated.percentile_ms(metric, q)
            rows.append({"metric": f"p{q}_{metric}_ms", "measured": m, "simulated": s, "rel_err": rel_err(s, m),
                         "tolerance": tol.get((metric, q), float("nan"))})
    m, s = measured.output_throughput, simulated.output_throughput
    rows.append({"metric": "output_throughput", "measured": m, "simulated": s, "rel_err": rel_err(s, m),
                 "tolerance": tol.get(("output_throughput", None), float("nan"))})
    table = pd.DataFrame(rows)
    table["ok"] = table["tolerance"].isna() | (table["rel_err"].abs() <= table["tolerance"])
    return table


def engine_step_table(steps: Sequence[EngineStep]) -> pd.DataFrame:
    """The engine's steps in pagesim's step-table columns."""
    return pd.DataFrame({
        "start_s": [s.start_s for s in steps], "duration_s": [s.duration_s for s in steps],
        "num_prefill_tokens": [s.num_prefill_tokens for s in steps],
        "num_decode_tokens": [s.num_decode_tokens for s in steps],
        "num_running": [s.decisions.num_running for s in steps], "num_waiting": [s.decisions.num_waiting for s in steps],
        "num_preempted": [len(s.decisions.preempted) for s in steps],
        "kv_cache_usage": [s.decisions.kv_cache_usage for s in steps]})


def compare_steps(engine: pd.DataFrame, pagesim: pd.DataFrame, usage_tol: float = 1e-9) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Side-by-side per step (aligned by index) and a summary: counts, agreement per field, the
    first step that differs and the total step time on each side."""
    n = max(len(engine), len(pagesim))
    e = engine.reset_index(drop=True).reindex(range(n))
    p = pagesim.reset_index(drop=True).reindex(range(n))
    table = pd.DataFrame({"step": range(n)})
    ok_all = np.ones(n, dtype=bool)
    agreement: dict[str, float] = {}
    for f in (*STEP_FIELDS, "kv_cache_usage", "duration_s"):
        table[f"engine_{f}"] = e[f]
        table[f"pagesim_{f}"] = p[f]
        if f == "duration_s":
            continue
        if f == "kv_cache_usage":
            ok = ((e[f] - p[f]).abs() <= usage_tol).to_numpy()
        else:
            ok = (e[f] == p[f]).to_numpy()
        table[f"{f}_ok"] = ok
        ok_all &= ok
        agreement[f] = 100.0 * float(ok.mean()) if n else 100.0
    table["all_ok"] = ok_all
    bad = np.flatnonzero(~ok_all)
    summary = {"engine_steps": len(engine), "pagesim_steps": len(pagesim),
               "steps_identical": int(ok_all.sum()), "pct_identical": 100.0 * float(ok_all.mean()) if n else 100.0,
               "first_divergent_step": int(bad[0]) if bad.size else None, "field_agreement_pct": agreement,
               "engine_preemptions": int(engine["num_preempted"].sum()),
               "pagesim_preemptions": int(pagesim["num_preempted"].sum()),
               "engine_busy_s": float(engine["duration_s"].sum()), "pagesim_busy_s": float(pagesim["duration_s"].sum()),
               "schedule_identical": bool(ok_all.all()) and len(engine) == len(pagesim)}
    return table, summary


def format_table(latency: pd.DataFrame, steps: dict[str, Any] | None) -> str:
    """The printed table: one line per figure, then the schedule line."""
    lines = [f"{'figure':<22}{'measured':>12}{'pagesim':>12}{'error':>9}{'tol':>7}  ok"]
    for r in latency.itertuples():
        tol = "" if np.isnan(r.tolerance) else f"{100 * r.tolerance:.0f}%"
        lines.append(f"{r.metric:<22}{r.measured:>12.3f}{r.simulated:>12.3f}{100 * r.rel_err:>+8.1f}%{tol:>7}  "
                     f"{'yes' if r.ok else 'NO'}")
    if steps is not None:
        lines.append(f"schedule: {steps['engine_steps']} engine steps, {steps['pagesim_steps']} pagesim steps, "
                     f"{steps['pct_identical']:.1f}% identical (first difference: {steps['first_divergent_step']}); "
                     f"preemptions {steps['engine_preemptions']} / {steps['pagesim_preemptions']}; "
                     f"busy time {steps['engine_busy_s']:.3f} s / {steps['pagesim_busy_s']:.3f} s")
    return "\n".join(lines)
