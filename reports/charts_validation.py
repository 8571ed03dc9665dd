"""Validation against a real engine (`pagesim validate --engine vllm`): simulated against measured.

Shown when the folder holds `validation.json` (written beside the simulated run's results): the
verdict and the side-by-side table, step times of both sides over the step index, and the TTFT
and TPOT distributions as overlaid CDFs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData
from reports.html import PALETTE, Chart, Section, esc, style, table_html

MAX_POINTS = 2000               # step-time points kept per side (keeps the file small)


def _cdf(fig: go.Figure, seconds: np.ndarray, name: str, color: str, dash: str) -> None:
    ms = np.sort(seconds) * 1000.0
    if ms.size > MAX_POINTS:
        ms = ms[np.linspace(0, ms.size - 1, MAX_POINTS).astype(int)]
    fig.add_trace(go.Scatter(x=ms, y=np.linspace(0, 100, ms.size), name=name, mode="lines",
                             line={"color": color, "dash": dash, "width": 1.6}))


def validation(data: ReportData) -> Section | None:
    v = data.validation
    if v is None:
        return None
    verdict = "passes" if v.get("passed") else "misses"
    steps = v.get("steps") or {}
    lead = (f"Simulated against {esc(v.get('source'))} (vLLM {esc(v.get('vllm_version') or '?')}): the comparison "
            f"{verdict} its tolerances")
    if steps:
        lead += (f"; {steps['pct_identical']:.1f}% of {steps['engine_steps']} steps scheduled identically "
                 f"({steps['engine_preemptions']} preemptions measured, {steps['pagesim_preemptions']} simulated)")
    fit = v.get("fit")
    if fit:
        lead += f"; the fitted step cost explains {100 * fit['r2_held_out']:.1f}% of held-out step-time variance"
    intro = f'<p class="lead">{lead}.</p>' + "".join(f"<p>Miss: {esc(f)}</p>" for f in v.get("failures", []))
    lat = pd.DataFrame(v.get("latency", []))
    tables = []
    if not lat.empty:
        lat = lat.assign(rel_err=lat["rel_err"].map(lambda x: f"{100 * x:+.1f}%" if x is not None else ""),
                         tolerance=lat["tolerance"].map(lambda x: f"{100 * x:.0f}%" if x == x and x is not None else ""))
        tables.append(table_html(lat, caption="Measured against simulated (milliseconds; throughput in tokens/s)"))
    charts = []
    st = data.validation_steps
    if st is not None and not st.empty:
        fig = go.Figure()
        for i, side in enumerate(("engine", "pagesim")):
            col = st[f"{side}_duration_s"].dropna()
            idx = col.index[:: max(1, len(col) // MAX_POINTS)]
            fig.add_trace(go.Scatter(x=st.loc[idx, "step"], y=col[idx] * 1000, name="measured" if side == "engine" else "pagesim",
                                     mode="lines", line={"color": PALETTE[i], "width": 1.0}))
        style(fig, "Step time: measured and simulated", "Step", "Step time (ms)")
        e, p = st["engine_duration_s"].sum(), st["pagesim_duration_s"].sum()
        charts.append(Chart(fig, f"The engine was busy {e:.2f} s, pagesim {p:.2f} s ({100 * (p / e - 1):+.1f}%)."
                            if e else "No measured step times."))
    rq = data.validation_requests
    if rq is not None and not rq.empty:
        for metric, label in (("ttft", "TTFT"), ("tpot", "TPOT")):
            fig = go.Figure()
            for i, side in enumerate(("measured", "pagesim")):
                vals = rq[(rq["side"] == side) & (rq["metric"] == metric)]["seconds"].dropna().to_numpy()
                if vals.size:
                    _cdf(fig, vals, side, PALETTE[i], "solid" if side == "measured" else "dash")
            style(fig, f"{label} distribution: measured and simulated", f"{label} (ms)", "Requests at or below (%)")
            row = lat[lat["metric"] == f"p50_{metric}_ms"] if not lat.empty else lat
            reading = (f"Median {label}: measured {row['measured'].iloc[0]:.1f} ms, pagesim {row['simulated'].iloc[0]:.1f} ms "
                       f"({row['rel_err'].iloc[0]})." if not row.empty else f"{label} of both sides.")
            charts.append(Chart(fig, reading))
    return Section("Validation against the real engine", intro, charts, tables)
