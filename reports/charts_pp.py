"""Pipeline parallelism: what each stage holds and how much of the run it sat idle.

Shown only when a run used `pipeline_parallel_size > 1` or a sweep varies it.  A run gets a table
of its stages (layers, weights, KV memory and blocks per GPU; the least KV blocks set the
engine's) and a bar chart of each stage's busy share (the rest is the pipeline bubble: stages
waiting for a batch because every request is in flight elsewhere, or for the pipeline to fill).
A sweep gets throughput, TPOT p99 and bubble per TP x PP configuration.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html

INTRO = ("<p>With <code>pipeline_parallel_size</code> = p, vLLM splits the layers into p stages "
         "(<code>get_pp_indices</code>); up to p batches are in flight, one per stage, and a request in a "
         "batch in flight waits for its token before it is scheduled again.  Each token of a request "
         "therefore crosses every stage: PP adds no speed to one request, and it multiplies throughput only "
         "when enough requests fill every stage.</p>")


def pipeline(data: ReportData) -> Section | None:
    df = data.configs
    if df is not None and "pipeline_parallel_size" in data.axes and "pipeline_parallel_size" in df:
        return _sweep(data, df)
    s = data.summary
    if not s or int(s.get("pipeline_parallel_size") or 1) <= 1 or not s.get("pp_stage_layers"):
        return None
    layers = s["pp_stage_layers"]
    busy = s.get("pp_stage_busy_frac") or [None] * len(layers)
    rows = pd.DataFrame({"stage": range(len(layers)), "layers": layers,
                         "weights (GiB / GPU)": s.get("pp_stage_weight_gib"),
                         "KV memory (GiB / GPU)": s.get("pp_stage_kv_gib"),
                         "KV blocks": s.get("pp_stage_kv_blocks"), "busy share": busy})
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[f"stage {i}" for i in range(len(layers))], y=busy, name="busy",
                         marker={"color": PALETTE[0]}))
    fig.add_trace(go.Bar(x=[f"stage {i}" for i in range(len(layers))], y=[1 - b for b in busy], name="idle (bubble)",
                         marker={"color": PALETTE[3 % len(PALETTE)]}))
    fig.update_layout(barmode="stack")
    style(fig, "Stage busy and idle shares over the run", "stage", "share of the run")
    kmin = min(range(len(layers)), key=lambda i: s["pp_stage_kv_blocks"][i])
    note = (f"Bubble fraction {fmt(s.get('pp_bubble_frac'))} of stage time; the engine's "
            f"{fmt(s.get('num_gpu_blocks'))} KV blocks are stage {kmin}'s (the least over stages).")
    intro = INTRO + (f"<p>{esc(s.get('model'))} on TP{esc(s.get('tensor_parallel_size'))} × PP{len(layers)}: "
                     f"activations cost {fmt((s.get('pp_transfer_s_per_token') or 0) * 1e9)} ns per token per stage "
                     "boundary.</p>")
    return Section("Pipeline parallelism", intro, [Chart(fig, note)], [table_html(rows, caption="Per stage, per GPU")])


def _sweep(data: ReportData, df: pd.DataFrame) -> Section:
    names = [a for a in ("tensor_parallel_size", "pipeline_parallel_size") if a in df]
    x_axis = data.load_axis if data.load_axis and data.load_axis in df else None
    others = [a for a in data.axes if a not in names and a != x_axis]
    df = df.copy()
    df["_cfg"] = [f"TP{t}×PP{p}" for t, p in zip(df.get("tensor_parallel_size", 1), df["pipeline_parallel_size"],
                                                  strict=False)] if "tensor_parallel_size" in df else \
        [f"PP{p}" for p in df["pipeline_parallel_size"]]
    if others:
        df["_cfg"] = df["_cfg"] + " " + pd.Series(config_labels(df, others), index=df.index)
    figs = []
    for col, title, unit in (("output_throughput", "Output throughput", "tokens/s"),
                             ("p99_tpot_ms", "Time per output token (p99)", "ms"),
                             ("pp_bubble_frac", "Pipeline bubble (stage idle share)", "fraction")):
        if col not in df:
            continue
        fig = go.Figure()
        for i, (cfg, g) in enumerate(df.groupby("_cfg", sort=False)):
            g = g.sort_values(x_axis) if x_axis else g
            x = g[x_axis] if x_axis else [cfg] * len(g)
            y = g[col].fillna(0.0) if col == "pp_bubble_frac" else g[col]
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=esc(cfg),
                                     line={"color": PALETTE[i % len(PALETTE)]}))
        style(fig, f"{title} by TP × PP", "Offered load (requests/s)" if x_axis == "rate" else (x_axis or "config"),
              f"{title} ({unit})")
        figs.append(fig)
    by = df.groupby("_cfg")
    tput = by["output_throughput"].mean() if "output_throughput" in df else None
    notes = [""] * len(figs)
    if tput is not None and len(figs):
        notes[0] = (f"{esc(tput.idxmax())} gives the most output tokens/s ({fmt(float(tput.max()))} averaged over the "
                    f"points), {esc(tput.idxmin())} the fewest ({fmt(float(tput.min()))}).")
    if "p99_tpot_ms" in df and len(figs) > 1:
        tp = by["p99_tpot_ms"].mean()
        notes[1] = (f"TPOT grows with the stages a token crosses: {esc(tp.idxmin())} {fmt(float(tp.min()))} ms, "
                    f"{esc(tp.idxmax())} {fmt(float(tp.max()))} ms (p99, averaged).")
    return Section("Pipeline parallelism", INTRO, [Chart(f, n) for f, n in zip(figs, notes, strict=True)])
