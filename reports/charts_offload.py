"""Tiered KV cache (sim.kv_offload): where prompt tokens came from and the TTFT a CPU tier buys.

A sweep over `kv_offloading_size` (size 0 = no tier: the same run as without one) gets hits per
tier and TTFT against the tier size; a single run with a tier gets where its prompt tokens came
from (GPU prefix cache, CPU tier, disk tier, computed) and its transfer figures.  Nothing when
offloading is off.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html

AXIS = "kv_offloading_size"
INTRO = ("<p>Prefix blocks offloaded to CPU memory (and a local disk) below the GPU prefix cache, as vLLM's "
         "<code>--kv-offloading-size</code> (OffloadingConnector) and LMCache keep them: every computed prompt "
         "block is stored; a request continues its GPU prefix hit in the CPU tier, then on disk, and waits "
         "for those blocks to cross the host link instead of recomputing them.  Stores are inclusive (every "
         "computed block, also those the GPU keeps), so a CPU tier smaller than the GPU cache mostly holds what "
         "the GPU still has: hits begin once the tier outgrows the GPU cache.</p>")


def offload(data: ReportData) -> Section | None:
    df = data.configs
    if df is not None and AXIS in data.axes and AXIS in df:
        return _sweep(data, df)
    s = data.summary
    if data.kind == "run" and s and "kv_offload_cpu_hit_tokens" in s:
        return _run(s)
    return None


def _sweep(data: ReportData, df: pd.DataFrame) -> Section:
    others = [a for a in data.axes if a != AXIS and a in df]
    df = df.assign(_cfg=config_labels(df, others))
    cfgs = list(dict.fromkeys(df["_cfg"]))[:8]
    fig, fig2 = go.Figure(), go.Figure()
    for i, cfg in enumerate(cfgs):
        g = df[df["_cfg"] == cfg].sort_values(AXIS)
        color = PALETTE[i % len(PALETTE)]
        for col, dash, what in (("prefix_cache_hit_rate", "solid", "GPU prefix cache"),
                                ("kv_offload_cpu_hit_rate", "dot", "CPU tier"),
                                ("kv_offload_disk_hit_rate", "dash", "disk tier")):
            if col in g and g[col].notna().any():
                fig.add_trace(go.Scatter(x=g[AXIS], y=g[col], mode="lines+markers", name=esc(f"{cfg} {what}"),
                                         line={"color": color, "dash": dash}))
        for col, dash, what in (("median_ttft_ms", "solid", "median"), ("p99_ttft_ms", "dot", "p99")):
            if col in g:
                fig2.add_trace(go.Scatter(x=g[AXIS], y=g[col], mode="lines+markers", name=esc(f"{cfg} TTFT {what}"),
                                          line={"color": color, "dash": dash}))
    style(fig, "Prefix hits per tier vs CPU tier size", "CPU tier size, kv_offloading_size (GiB)",
          "Hit rate (fraction of looked-up tokens)")
    style(fig2, "Time to first token vs CPU tier size", "CPU tier size, kv_offloading_size (GiB)", "TTFT (ms)")
    by = df.groupby(AXIS)
    r1 = "The GPU prefix cache's hit rate is over prompt tokens; the tiers' over the blocks looked up past the GPU hit."
    if "kv_offload_cpu_hit_rate" in df:
        hit = by["kv_offload_cpu_hit_rate"].mean()
        r1 = (f"The CPU tier serves {fmt(float(hit.iloc[0]) * 100)}% of the tokens looked up past the GPU hit at "
              f"{fmt(float(hit.index[0]))} GiB and {fmt(float(hit.iloc[-1]) * 100)}% at {fmt(float(hit.index[-1]))} GiB "
              "(mean over configurations). " + r1)
    med, p99 = by["median_ttft_ms"].mean(), by["p99_ttft_ms"].mean()
    r2 = (f"Median TTFT goes from {fmt(float(med.iloc[0]))} ms at {fmt(float(med.index[0]))} GiB to "
          f"{fmt(float(med.iloc[-1]))} ms at {fmt(float(med.index[-1]))} GiB, p99 from {fmt(float(p99.iloc[0]))} to "
          f"{fmt(float(p99.iloc[-1]))} ms (size 0 is the run without a tier).")
    return Section("Tiered KV cache", INTRO, [Chart(fig, r1), Chart(fig2, r2)])


def _run(s: dict) -> Section:
    prompt = float(s.get("total_input_tokens") or 0)
    gpu = float(s.get("prefix_cache_hit_rate") or 0) * prompt
    cpu, disk = float(s["kv_offload_cpu_hit_tokens"]), float(s.get("kv_offload_disk_hit_tokens") or 0)
    computed = max(prompt - gpu - cpu - disk, 0.0)
    names = ["GPU prefix cache", "CPU tier", "disk tier", "computed"]
    vals = [gpu, cpu, disk, computed]
    fig = go.Figure(go.Bar(x=names, y=vals, marker={"color": PALETTE[: len(names)]}))
    style(fig, "Where prompt tokens came from", "source", "prompt tokens (all requests)")
    share = (cpu + disk) / prompt * 100 if prompt else 0.0
    reading = (f"The tiers supplied {fmt(share)}% of prompt tokens ({fmt(cpu)} from CPU, {fmt(disk)} from disk): "
               "prefill the GPU did not have to compute.  Tier hits count all requests, warm-up included.")
    rows = pd.DataFrame([{
        "CPU tier (blocks)": s.get("kv_offload_cpu_blocks"), "disk tier (blocks)": s.get("kv_offload_disk_blocks"),
        "CPU hit rate": s.get("kv_offload_cpu_hit_rate"), "disk hit rate": s.get("kv_offload_disk_hit_rate"),
        "loads": s.get("kv_offload_num_loads"), "mean load wait (ms)": s.get("kv_offload_mean_load_ms"),
        "loaded (GB)": (s.get("kv_offload_load_bytes") or 0) / 1e9, "stored (GB)": (s.get("kv_offload_store_bytes") or 0) / 1e9,
        "store link utilization": s.get("kv_offload_store_link_utilization")}])
    return Section("Tiered KV cache", INTRO, [Chart(fig, reading)], [table_html(rows, caption="Offload tiers")])
