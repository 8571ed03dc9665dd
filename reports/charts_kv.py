"""KV-cache charts: one run over time, fragmentation and concurrency by block size and allocator
(the comparison of the vLLM paper's Fig. 2), preemptions and swap traffic against swap space."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style

KV_PARTS = (("kv_token_state_frac", "token states", "#2ca02c"), ("kv_internal_frag_frac", "internal fragmentation", "#ff7f0e"),
            ("kv_reserved_frac", "reserved (not yet used)", "#d62728"), ("kv_cached_free_frac", "cached, free (prefix cache)", "#9467bd"),
            ("kv_external_frag_frac", "external fragmentation (free, outside the largest hole)", "#8c564b"))


def over_time(data: ReportData) -> Section | None:
    """KV usage broken down, and running / waiting requests, over the chosen run."""
    s = data.steps
    if s is None or s.empty or "kv_cache_usage" not in s:
        return None
    t = s["start_s"]
    fig = go.Figure()
    for col, name, color in KV_PARTS:
        if col in s:
            fig.add_trace(go.Scatter(x=t, y=s[col] * 100, name=name, stackgroup="kv", mode="lines",
                                     line={"width": 0.5, "color": color}))
    fig.add_trace(go.Scatter(x=t, y=s["kv_cache_usage"] * 100, name="KV cache usage (vLLM metric)",
                             mode="lines", line={"color": "#222", "width": 1.2}))
    style(fig, f"KV cache over time ({data.steps_label})", "Simulated time (s)", "Share of KV cache blocks (%)")
    mean_use = float(s["kv_cache_usage"].mean() * 100)
    frag = float(s.get("kv_internal_frag_frac", pd.Series([0.0])).mean() * 100)
    res = float(s.get("kv_reserved_frac", pd.Series([0.0])).mean() * 100)
    r1 = (f"KV usage averages {mean_use:.0f}% and peaks at {float(s['kv_cache_usage'].max() * 100):.0f}%; internal "
          f"fragmentation holds {frag:.1f}% of the cache and reservations {res:.1f}% on average.")
    fig2 = go.Figure()
    for i, (col, name) in enumerate((("num_running", "running"), ("num_waiting", "waiting"), ("num_preempted", "preempted this step"))):
        if col in s:
            fig2.add_trace(go.Scatter(x=t, y=s[col], name=name, mode="lines", line={"color": PALETTE[i]}))
    style(fig2, f"Requests running and waiting ({data.steps_label})", "Simulated time (s)", "Requests")
    wait_max = float(s["num_waiting"].max()) if "num_waiting" in s else 0.0
    r2 = (f"On average {float(s['num_running'].mean()):.0f} requests run per step (at most "
          f"{float(s['num_running'].max()):.0f}); the waiting queue peaks at {wait_max:.0f} requests"
          + (f" and {float(s['num_preempted'].sum()):.0f} preemptions occur." if s.get("num_preempted", pd.Series([0])).sum() > 0
             else " and no request is preempted."))
    note = "<p>Replica 0 of the run; step values averaged into time bins.</p>"
    return Section("KV cache and queues over time", note, [Chart(fig, r1), Chart(fig2, r2)])


def _group_cols(data: ReportData, df: pd.DataFrame) -> list[str]:
    return [c for c in ("allocator", "block_size") if c in data.axes and c in df]


def _at_max_load(data: ReportData, df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Rows at the highest load swept (the most KV pressure), others at their first value."""
    held = []
    if data.load_axis and data.load_axis in df:
        top = pd.to_numeric(df[data.load_axis], errors="coerce").max()
        df = df[pd.to_numeric(df[data.load_axis], errors="coerce") == top]
        held.append(f"{data.load_axis}={fmt(float(top))}")
    for a in data.axes:
        if a not in ("allocator", "block_size", data.load_axis) and a in df and data.axis_values.get(a):
            df = df[df[a] == data.axis_values[a][0]]
            held.append(f"{a}={data.axis_values[a][0]}")
    return df, f" ({', '.join(held)})" if held else ""


def fragmentation(data: ReportData) -> Section | None:
    """Where the KV cache goes, and how many requests run at once, by allocator and block size."""
    df = data.configs
    if df is None or data.kind != "sweep":
        return None
    groups = _group_cols(data, df)
    if not groups or "kv_token_state_frac" not in df:
        return None
    df, note = _at_max_load(data, df)
    if df.empty:
        return None
    agg = df.groupby(groups, sort=False).mean(numeric_only=True).reset_index()
    labels = [esc(label) for label in config_labels(agg, groups)]
    # two-level axis (allocator, then block size) when both vary; plain labels otherwise
    xs: Any = [[esc(v) for v in agg[g]] for g in groups] if len(groups) == 2 else [esc(v) for v in agg[groups[0]]]
    x_title = " / ".join("block size (tokens)" if g == "block_size" else g for g in groups)
    fig = go.Figure()
    for col, name, color in KV_PARTS:
        if col in agg:
            fig.add_trace(go.Bar(x=xs, y=agg[col] * 100, name=name, marker_color=color))
    fig.update_layout(barmode="stack")
    style(fig, f"KV cache use by {' and '.join(groups)}{note}", x_title, "Share of KV cache (%)")
    waste = (agg.get("kv_internal_frag_frac", 0) + agg.get("kv_reserved_frac", 0)
             + agg.get("kv_external_frag_frac", 0)) * 100
    best, worst = int(waste.idxmin()), int(waste.idxmax())
    r1 = (f"Internal and external fragmentation plus reservations waste {waste[best]:.1f}% of the cache with "
          f"{labels[best]} and {waste[worst]:.1f}% with {labels[worst]}.")
    charts = [Chart(fig, r1)]
    if "mean_num_running" in agg:
        ci = agg["mean_num_running_ci"].fillna(0) if "mean_num_running_ci" in agg else None
        fig2 = go.Figure(go.Bar(x=xs, y=agg["mean_num_running"], marker_color=PALETTE[0], name="mean running",
                                error_y={"type": "data", "array": ci} if ci is not None and ci.any() else None))
        style(fig2, f"Usable concurrency by {' and '.join(groups)}{note}", x_title, "Requests running per step (mean)")
        hi, lo = int(agg["mean_num_running"].idxmax()), int(agg["mean_num_running"].idxmin())
        run_hi, run_lo = float(agg["mean_num_running"][hi]), float(agg["mean_num_running"][lo])
        r2 = (f"{labels[hi]} runs {run_hi:.1f} requests at once on average, {labels[lo]} only {run_lo:.1f}."
              if run_hi > 1.02 * run_lo else
              f"Every setting runs about {run_hi:.1f} requests at once on average: KV capacity does not limit this load.")
        charts.append(Chart(fig2, r2))
    intro = ("<p>Sweep <code>allocator</code> too for the vLLM paper's Fig. 2 comparison.</p>" if "allocator" not in groups else
             "<p>The vLLM paper's Fig. 2 comparison: paged blocks against contiguous reservations "
             "(<code>contiguous-max</code> reserves the maximum length, <code>contiguous-pow2</code> the next power of two, "
             "<code>contiguous-oracle</code> the true length).</p>")
    return Section("Fragmentation and concurrency by block size", intro, charts)


def swap(data: ReportData) -> Section | None:
    """Preemptions and swap traffic against CPU swap space."""
    df = data.configs
    if df is None or "swap_space" not in data.axes or "swap_space" not in df:
        return None
    others = [a for a in data.axes if a != "swap_space" and a in df]
    df = df.assign(_cfg=config_labels(df, others))
    cfgs = list(dict.fromkeys(df["_cfg"]))[:8]
    fig, fig2 = go.Figure(), go.Figure()
    for i, cfg in enumerate(cfgs):
        g = df[df["_cfg"] == cfg].sort_values("swap_space")
        color = PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Scatter(x=g["swap_space"], y=g.get("num_preemptions"), name=esc(cfg), mode="lines+markers",
                                 line={"color": color}))
        for col, dash, what in (("num_swapped_out_blocks", "solid", "out"), ("num_swapped_in_blocks", "dot", "in")):
            if col in g:
                fig2.add_trace(go.Scatter(x=g["swap_space"], y=g[col], name=esc(f"{cfg} swapped {what}"),
                                          mode="lines+markers", line={"color": color, "dash": dash}))
    style(fig, "Preemptions vs swap space", "CPU swap space per GPU (GiB)", "Preemptions (count per run)")
    style(fig2, "Swap traffic vs swap space", "CPU swap space per GPU (GiB)", "KV blocks swapped (count per run)")
    pre = df.groupby("swap_space")["num_preemptions"].mean() if "num_preemptions" in df else pd.Series(dtype=float)
    r1 = (f"Preemptions go from {fmt(float(pre.iloc[0]))} at {fmt(float(pre.index[0]))} GiB to "
          f"{fmt(float(pre.iloc[-1]))} at {fmt(float(pre.index[-1]))} GiB of swap space (mean over configurations)."
          if len(pre) else "Preemptions against swap space.")
    out = df.groupby("swap_space")["num_swapped_out_blocks"].mean() if "num_swapped_out_blocks" in df else pd.Series(dtype=float)
    r2 = (f"The most traffic, {fmt(float(out.max()))} blocks swapped out per run on average, is at "
          f"{fmt(float(out.idxmax()))} GiB." if len(out) and out.max() > 0
          else "No blocks were swapped: these runs preempt by recompute (swap needs scheduler: vllm-v0 with preemption_mode: swap).")
    return Section("Preemptions and swap", "", [Chart(fig, r1), Chart(fig2, r2)])
