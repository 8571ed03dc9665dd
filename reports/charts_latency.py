"""Latency and cost charts: throughput-latency curves with confidence bands, the cost-latency Pareto front."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html

MAX_CONFIGS = 8
LOAD_LABELS = {"rate": "Offered load (requests/s)", "max_concurrency": "Concurrency (requests in flight)"}
LOAD_UNITS = {"rate": "req/s", "max_concurrency": "requests in flight"}
METRICS = (("ttft", "TTFT", "time to first token"), ("tpot", "TPOT", "time per output token"),
           ("e2el", "E2EL", "end-to-end latency"))


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def labelled(data: ReportData) -> pd.DataFrame | None:
    """The per-configuration table with a `_cfg` label (axes other than the load axis)."""
    if data.configs is None or data.load_axis is None or data.load_axis not in data.configs:
        return None
    names = [a for a in data.axes if a != data.load_axis and a in data.configs]
    df = data.configs.copy()
    df["_cfg"] = config_labels(df, names)
    return df


def top_configs(df: pd.DataFrame) -> list[str]:
    """Up to MAX_CONFIGS configurations, those with the highest peak throughput first."""
    key = "request_goodput" if "request_goodput" in df and df["request_goodput"].notna().any() else "request_throughput"
    order = df.groupby("_cfg", sort=False)[key].max().sort_values(ascending=False) if key in df else None
    cfgs = list(order.index) if order is not None else list(dict.fromkeys(df["_cfg"]))
    return cfgs[:MAX_CONFIGS]


def _slo(data: ReportData, key: str) -> float | None:
    slo = data.scenario.get("slo") or {}
    v = slo.get(key) if isinstance(slo, dict) else None
    return float(v) if isinstance(v, int | float) else None


def latency_curves(data: ReportData) -> Section | None:
    """TTFT, TPOT and E2EL percentiles (p50 dotted, p99 solid) against load, per configuration."""
    df = labelled(data)
    x = data.load_axis
    if df is None or x is None or pd.to_numeric(df[x], errors="coerce").nunique() < 2:
        return None
    df[x] = pd.to_numeric(df[x], errors="coerce")
    cfgs = top_configs(df)
    unit = LOAD_UNITS[x]
    charts = []
    for key, short, long in METRICS:
        p99, p50 = f"p99_{key}_ms", f"p50_{key}_ms"
        if p99 not in df:
            continue
        fig = go.Figure()
        for i, cfg in enumerate(cfgs):
            g = df[df["_cfg"] == cfg].sort_values(x)
            color = PALETTE[i % len(PALETTE)]
            ci = f"{p99}_ci"
            if ci in g and g[ci].notna().any():
                lo, hi = (g[p99] - g[ci].fillna(0)).clip(lower=0), g[p99] + g[ci].fillna(0)
                fig.add_trace(go.Scatter(x=list(g[x]) + list(g[x])[::-1], y=list(hi) + list(lo)[::-1], fill="toself",
                                         fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                         showlegend=False, legendgroup=esc(cfg)))
            fig.add_trace(go.Scatter(x=g[x], y=g[p99], mode="lines+markers", name=esc(cfg),
                                     line={"color": color}, legendgroup=esc(cfg),
                                     hovertemplate=f"{esc(cfg)}<br>p99 %{{y:.1f}} ms at %{{x}} {unit}<extra></extra>"))
            if p50 in g:
                fig.add_trace(go.Scatter(x=g[x], y=g[p50], mode="lines", name=esc(f"{cfg} p50"), showlegend=False,
                                         line={"color": color, "dash": "dot"}, legendgroup=esc(cfg),
                                         hovertemplate=f"{esc(cfg)}<br>p50 %{{y:.1f}} ms at %{{x}} {unit}<extra></extra>"))
        slo = _slo(data, f"{key}_ms")
        if slo is not None:
            fig.add_hline(y=slo, line={"color": "#a00", "dash": "dash", "width": 1},
                          annotation_text=f"SLO {slo:g} ms", annotation_position="top left")
        style(fig, f"{short} percentiles vs load", LOAD_LABELS[x], f"{short} ({long}), ms")
        shown = df[df["_cfg"].isin(cfgs)]
        lows = shown[p50] if p50 in shown else shown[p99]
        lo_pos, hi_val = lows[lows > 0].min(), shown[p99].max()
        if pd.notna(lo_pos) and hi_val / lo_pos > 50:   # log scale, range from the lines (bands may reach 0)
            fig.update_yaxes(type="log", dtick="D2", range=[math.log10(lo_pos) - 0.1, math.log10(hi_val) + 0.15])
        charts.append(Chart(fig, _curve_reading(df, cfgs, x, p99, short, unit, slo)))
    if not charts:
        return None
    more = df["_cfg"].nunique() - len(cfgs)
    note = f" The {len(cfgs)} configurations with the highest throughput are drawn; {more} more are in the tables." if more > 0 else ""
    bands = " Shaded bands are 95% confidence intervals of the p99 over seeds." if data.num_seeds > 1 else ""
    intro = f"<p>Latency percentiles as the load rises: solid lines p99, dotted p50.{esc(note + bands)}</p>"
    return Section("Throughput–latency curves", intro, charts)


def _curve_reading(df: pd.DataFrame, cfgs: list[str], x: str, col: str, short: str, unit: str, slo: float | None) -> str:
    top = df[df["_cfg"].isin(cfgs)]
    if slo is not None:
        under = top[top[col] <= slo].groupby("_cfg")[x].max().reindex(cfgs)
        if under.notna().any():
            best_x, worst = float(under.max()), under.fillna(-math.inf).idxmin()
            n_best = int((under == best_x).sum())
            lead = (f"{under.idxmax()} keeps" if n_best == 1 else f"{n_best} of the {len(cfgs)} configurations shown keep")
            text = f"{lead} p99 {short} within the {slo:g} ms SLO up to {fmt(best_x)} {unit}"
            if under[worst] != best_x:
                low = "at no load swept" if not math.isfinite(under.fillna(-math.inf)[worst]) else \
                    f"only up to {fmt(float(under[worst]))} {unit}"
                text += f"; {worst} {low}"
            return text + "."
        return f"No configuration shown keeps p99 {short} within the {slo:g} ms SLO at any load swept."
    xmax = top[x].max()
    at = top[top[x] == xmax].sort_values(col)
    if len(at) == 0:
        return f"p99 {short} against load."
    first = top[top["_cfg"] == at["_cfg"].iloc[0]].sort_values(x)
    return (f"At {fmt(float(xmax))} {unit}, {at['_cfg'].iloc[0]} has the lowest p99 {short} ({fmt(float(at[col].iloc[0]))} ms, "
            f"up from {fmt(float(first[col].iloc[0]))} ms at {fmt(float(first[x].iloc[0]))} {unit}).")


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Rows not dominated by another (lower or equal in both x and y, lower in one)."""
    p = points.dropna(subset=[x, y]).sort_values([x, y])
    keep, best_y = [], math.inf
    for idx, row in p.iterrows():
        if row[y] < best_y:
            keep.append(idx)
            best_y = row[y]
    return p.loc[keep]


def cost_pareto(data: ReportData) -> Section | None:
    """Cost per million output tokens against p99 E2EL; the Pareto front joined by a line."""
    if data.kind == "plan" and data.candidates is not None:
        pts = data.candidates.copy()
        names = [a for a in data.axes if a in pts]
        pts["_cfg"] = config_labels(pts, names)
        what = "each candidate at its sustainable load, cost at the target load"
    else:
        pts = labelled(data) if data.load_axis else (data.configs.copy() if data.configs is not None else None)
        if pts is None:
            return None
        if "_cfg" not in pts:
            pts["_cfg"] = config_labels(pts, [a for a in data.axes if a in pts])
        if data.load_axis:
            pts["_cfg"] = pts["_cfg"] + ", " + data.load_axis + "=" + pts[data.load_axis].astype(str)
        what = "each configuration and load of the sweep"
    x, y = "p99_e2el_ms", "usd_per_million_output_tokens"
    if x not in pts or y not in pts or pts[[x, y]].dropna().shape[0] < 2:
        return None
    front = pareto_front(pts, x, y)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=pts[x], y=pts[y], mode="markers", name="configurations",
                             marker={"color": "#9bb4d0", "size": 8}, text=[esc(c) for c in pts["_cfg"]],
                             hovertemplate="%{text}<br>p99 E2EL %{x:.0f} ms<br>$%{y:.3f}/M tokens<extra></extra>"))
    fig.add_trace(go.Scatter(x=front[x], y=front[y], mode="lines+markers", name="Pareto front",
                             marker={"color": PALETTE[3], "size": 9}, line={"color": PALETTE[3]},
                             text=[esc(c) for c in front["_cfg"]],
                             hovertemplate="%{text}<br>p99 E2EL %{x:.0f} ms<br>$%{y:.3f}/M tokens<extra></extra>"))
    style(fig, "Cost vs latency", "p99 end-to-end latency (ms)", "Cost (USD per million output tokens)")
    cheapest = front.sort_values(y).iloc[0]
    fastest = front.sort_values(x).iloc[0]
    reading = (f"{len(front)} of {len(pts)} points are on the front: the cheapest is {cheapest['_cfg']} "
               f"(${fmt(float(cheapest[y]))}/M tokens at {fmt(float(cheapest[x]))} ms p99 E2EL), the fastest "
               f"{fastest['_cfg']} ({fmt(float(fastest[x]))} ms at ${fmt(float(fastest[y]))}/M tokens).")
    intro = f"<p>Points are {esc(what)}; a point on the front is cheaper or faster than every other.</p>"
    return Section("Cost vs latency (Pareto front)", intro, [Chart(fig, reading)])


def confidence_table(data: ReportData) -> Section | None:
    """Means with 95% Student-t half-widths over seeds, per configuration (and load)."""
    df = data.configs
    if df is None or data.num_seeds < 2 or "num_seeds" not in df:
        return None
    metrics = [m for m in ("request_throughput", "output_throughput", "p99_ttft_ms", "p99_tpot_ms", "p99_e2el_ms",
                           "num_preemptions", "usd_per_million_output_tokens") if m in df]
    cols = [a for a in data.axes if a in df]
    rows: list[dict[str, Any]] = []
    for _, r in df.head(60).iterrows():
        row = {c: r[c] for c in cols} | {"seeds": int(r["num_seeds"])}
        for m in metrics:
            hw = r.get(f"{m}_ci")
            if hw is not None and np.isfinite(hw):
                hw = 0.0 if abs(hw) <= 1e-9 * abs(r[m]) else hw   # float noise of identical seeds
                row[m] = f"{fmt(r[m])} ± {fmt(hw)}"
            else:
                row[m] = fmt(r[m])
        rows.append(row)
    intro = (f"<p>Each value is the mean over {data.num_seeds} seeds ± the half-width of its 95% confidence "
             "interval (Student t with n − 1 degrees of freedom).</p>")
    more = f"First 60 of {len(df)} rows." if len(df) > 60 else ""
    return Section("Confidence intervals", intro, [], [table_html(pd.DataFrame(rows), caption=more)])
