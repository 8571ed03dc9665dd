"""Fleet charts: how each routing policy spreads the load and keeps prefixes cached.

A sweep with a `router` axis gets a bar chart per policy (prefix-cache hit rate and load
imbalance) and the TTFT it buys; a single run over several replicas gets its per-replica table.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html


def routing(data: ReportData) -> Section | None:
    df = data.configs
    if df is not None and "router" in data.axes and "router" in df:
        return _routing_sweep(data, df)
    s = data.summary
    if s and int(s.get("num_replicas", 1)) > 1 and s.get("replica_requests"):
        rows = pd.DataFrame({"replica": range(len(s["replica_requests"])), "requests": s["replica_requests"],
                             "prefix-cache hit rate": s.get("replica_prefix_cache_hit_rate") or [None] * len(s["replica_requests"])})
        intro = (f"<p>Router <code>{esc(s.get('router', ''))}</code> over {len(rows)} replicas: load imbalance "
                 f"(max / mean tokens per replica) {fmt(s.get('load_imbalance'))}, fleet prefix-cache hit rate "
                 f"{fmt(s.get('prefix_cache_hit_rate'))}.</p>")
        return Section("Routing across replicas", intro, [], [table_html(rows, caption="Requests and prefix hits per replica")])
    return None


def _routing_sweep(data: ReportData, df: pd.DataFrame) -> Section:
    others = [a for a in data.axes if a != "router" and a in df]
    if data.load_axis and data.load_axis in df:                # compare policies at the highest load swept
        top = pd.to_numeric(df[data.load_axis], errors="coerce").max()
        df = df[pd.to_numeric(df[data.load_axis], errors="coerce") == top]
        others = [a for a in others if a != data.load_axis]
    df = df.assign(_cfg=config_labels(df, others)) if others else df.assign(_cfg="")
    fig, fig2 = go.Figure(), go.Figure()
    for i, (cfg, g) in enumerate(df.groupby("_cfg", sort=False)):
        color = PALETTE[i % len(PALETTE)]
        label = esc(cfg) if cfg else "all"
        fig.add_trace(go.Bar(x=g["router"], y=g["prefix_cache_hit_rate"] * 100, name=f"{label} hit rate",
                             marker_color=color))
        if "load_imbalance" in g:
            fig.add_trace(go.Scatter(x=g["router"], y=g["load_imbalance"], name=f"{label} imbalance", yaxis="y2",
                                     mode="markers", marker={"color": color, "symbol": "diamond", "size": 11}))
        for col, dash in (("median_ttft_ms", "p50"), ("p99_ttft_ms", "p99")):
            if col in g:
                fig2.add_trace(go.Bar(x=g["router"], y=g[col], name=f"{label} TTFT {dash}", marker_color=color,
                                      opacity=1.0 if dash == "p50" else 0.55))
    style(fig, "Prefix-cache hit rate and load imbalance by router", "Routing policy", "Prefix-cache hit rate (%)")
    fig.update_layout(yaxis2={"title": "Load imbalance (max / mean tokens per replica)", "overlaying": "y",
                              "side": "right", "rangemode": "tozero"}, barmode="group")
    style(fig2, "Time to first token by router", "Routing policy", "TTFT (ms)")
    fig2.update_layout(barmode="group")
    by = df.groupby("router")
    hit = by["prefix_cache_hit_rate"].mean()
    ttft = by["median_ttft_ms"].mean() if "median_ttft_ms" in df else pd.Series(dtype=float)
    r1 = (f"{esc(hit.idxmax())} keeps the most prompts cached ({hit.max() * 100:.0f}% of prompt tokens hit vs "
          f"{hit.min() * 100:.0f}% for {esc(hit.idxmin())})"
          + (f"; the most uneven policy, {esc(by['load_imbalance'].mean().idxmax())}, puts "
             f"{fmt(float(by['load_imbalance'].mean().max()))}x the mean load on its busiest replica."
             if "load_imbalance" in df else "."))
    r2 = (f"Median TTFT is lowest with {esc(ttft.idxmin())} ({fmt(float(ttft.min()))} ms) and highest with "
          f"{esc(ttft.idxmax())} ({fmt(float(ttft.max()))} ms)." if len(ttft) else "TTFT by router.")
    intro = ("<p>Each replica caches the prefixes of the requests it served: a router that sends repeated "
             "prompts to the same replica raises the hit rate and cuts prefill work, at the price of a less even "
             "load; routers reading scraped metrics can herd traffic onto the replica that looked idlest.</p>")
    return Section("Routing across replicas", intro, [Chart(fig, r1), Chart(fig2, r2)])


def slo_classes(data: ReportData) -> Section | None:
    """Per SLO class: attainment, rejections and latency, for a run with `workload.classes`."""
    s = data.summary
    classes = s.get("classes") if s else None
    if not s or not classes:
        return None
    df = pd.DataFrame([{"class": name, **row} for name, row in classes.items()])
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[esc(c) for c in df["class"]], y=df["slo_attainment"].astype(float) * 100,
                         name="SLO attainment", marker_color=PALETTE[2]))
    fig.add_trace(go.Bar(x=[esc(c) for c in df["class"]], y=df["num_rejected"] / df["num_requests"].clip(lower=1) * 100,
                         name="rejected by admission control", marker_color=PALETTE[3]))
    style(fig, "SLO attainment and rejections by class", "SLO class", "Share of the class's requests (%)")
    fig.update_layout(barmode="group")
    worst = df.loc[df["slo_attainment"].astype(float).idxmin()]
    reading = (f"Class {esc(worst['class'])} (priority {int(worst['priority'])}) fares worst: "
               f"{float(worst['slo_attainment']) * 100:.0f}% of its requests meet their targets"
               + (f", {int(worst['num_rejected'])} were rejected." if int(worst["num_rejected"]) else "."))
    cols = ["class", "priority", "num_requests", "completed", "num_rejected", "slo_attainment", "request_goodput",
            "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "ttft_ms_target", "tpot_ms_target"]
    intro = (f"<p>Scheduling policy <code>{esc(data.scenario.get('engine', {}).get('scheduling_policy', 'fcfs'))}</code>, "
             f"admission control <code>{esc(s.get('admission', 'none'))}</code>: {int(s.get('num_rejected', 0))} requests "
             "rejected in all.  A rejected request counts as one that missed its SLO.</p>")
    return Section("SLO classes and admission control", intro, [Chart(fig, reading)],
                   [table_html(df[[c for c in cols if c in df]], caption="Per-class results")])


def autoscaling(data: ReportData) -> Section | None:
    """Replicas, the scaling metric and SLO attainment over the run, and what the day cost."""
    s = data.summary
    if not s or not s.get("timeline_t_s"):
        return None
    t = s["timeline_t_s"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=s["timeline_started"], name="replicas started (billed)", mode="lines",
                             line={"shape": "hv", "color": PALETTE[0]}))
    fig.add_trace(go.Scatter(x=t, y=s["timeline_ready"], name="replicas ready (serving)", mode="lines",
                             line={"shape": "hv", "color": PALETTE[2], "dash": "dot"}))
    fig.add_trace(go.Scatter(x=t, y=s["timeline_metric"], name=f"metric: {esc(s.get('autoscaling_metric', ''))}",
                             mode="lines", yaxis="y2", line={"color": PALETTE[1], "width": 1}))
    style(fig, "Replicas and the scaling metric over time", "Simulated time (s)", "Replicas")
    fig.update_layout(yaxis2={"title": f"{esc(s.get('autoscaling_metric', ''))} (per ready replica)",
                              "overlaying": "y", "side": "right", "rangemode": "tozero"})
    r1 = (f"The fleet ran {fmt(s.get('mean_replicas'))} replicas on average and at most {int(s.get('max_replicas_started', 0))} "
          f"({int(s.get('num_scale_ups', 0))} scale-ups, {int(s.get('num_scale_downs', 0))} scale-downs): "
          f"{fmt(s.get('replica_hours'))} replica-hours, ${fmt(s.get('fleet_cost_usd'))} in all.")
    att = [None if a is None else a * 100 for a in s.get("timeline_slo_attainment") or []]
    charts = [Chart(fig, r1)]
    if any(a is not None for a in att):
        fig2 = go.Figure(go.Scatter(x=t, y=att, mode="lines+markers", name="SLO attainment",
                                    line={"color": PALETTE[3]}, marker={"size": 4}))
        style(fig2, "SLO attainment over time (requests by arrival window)", "Simulated time (s)",
              "Requests meeting the SLO (%)")
        vals = [a for a in att if a is not None]
        worst = min(vals)
        r2 = (f"Attainment stays between {worst:.0f}% and {max(vals):.0f}%; the worst window starts at "
              f"{fmt(t[att.index(worst)])} s" + (" (new replicas were still provisioning)." if worst < 99 else "."))
        charts.append(Chart(fig2, r2))
    return Section("Autoscaling over the run", "", charts)


def disaggregation(data: ReportData) -> Section | None:
    """Co-located against prefill/decode layouts at equal GPU count (a `pd_layout` sweep), or one
    disaggregated run's KV-transfer figures."""
    df = data.configs
    if df is not None and "pd_layout" in data.axes and "pd_layout" in df:
        x_axis = data.load_axis if data.load_axis and data.load_axis in df else None
        fig, fig2 = go.Figure(), go.Figure()
        for i, (layout, g) in enumerate(df.groupby("pd_layout", sort=False)):
            g = g.sort_values(x_axis) if x_axis else g
            x = g[x_axis] if x_axis else [esc(layout)] * len(g)
            color = PALETTE[i % len(PALETTE)]
            for col, dash, what in (("p99_ttft_ms", "solid", "TTFT p99"), ("p99_tpot_ms", "dot", "TPOT p99")):
                if col in g:
                    target = fig if col.endswith("ttft_ms") else fig2
                    target.add_trace(go.Scatter(x=x, y=g[col], mode="lines+markers", name=f"{esc(layout)} {what}",
                                                line={"color": color, "dash": dash}))
        x_title = "Offered load (requests/s)" if x_axis == "rate" else (x_axis or "layout")
        style(fig, "Time to first token by layout (p99)", x_title, "TTFT p99 (ms)")
        style(fig2, "Time per output token by layout (p99)", x_title, "TPOT p99 (ms)")
        by = df.groupby("pd_layout")
        ttft, tpot = by["p99_ttft_ms"].mean(), by["p99_tpot_ms"].mean()
        r1 = (f"{esc(ttft.idxmin())} gives the lowest TTFT p99 ({fmt(float(ttft.min()))} ms averaged over the loads), "
              f"{esc(ttft.idxmax())} the highest ({fmt(float(ttft.max()))} ms).")
        r2 = (f"{esc(tpot.idxmin())} gives the steadiest decoding (TPOT p99 {fmt(float(tpot.min()))} ms), "
              f"{esc(tpot.idxmax())} the least steady ({fmt(float(tpot.max()))} ms): prefills no longer interrupt decodes "
              "on a decode-only replica.")
        intro = ("<p>Layouts at equal GPU count: <code>NC</code> is N co-located replicas, <code>xPyD</code> x prefill "
                 "and y decode replicas with each prompt's KV cache moved between them.  Disaggregation trades "
                 "TTFT (a prefill queue and a transfer) for steady TPOT.</p>")
        return Section("Prefill/decode disaggregation", intro, [Chart(fig, r1), Chart(fig2, r2)])
    s = data.summary
    if s and s.get("num_disaggregated"):
        rows = pd.DataFrame([{"prefill replicas": s.get("prefill_replicas"), "decode replicas": s.get("decode_replicas"),
                              "prefill GPU": s.get("prefill_gpu"), "link": s.get("kv_link"),
                              "requests disaggregated": s.get("num_disaggregated"),
                              "KV transfer mean (ms)": s.get("mean_kv_transfer_ms"),
                              "KV transfer p99 (ms)": s.get("p99_kv_transfer_ms")}])
        return Section("Prefill/decode disaggregation", "", [], [table_html(rows, caption="KV transfers")])
    return None
