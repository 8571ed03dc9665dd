"""The report's opening sections: the recommendation (plan), the best configurations (sweep) or the
run's headline numbers (run); which settings matter; failed points."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData, config_labels
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html

HEADLINE = (("request_throughput", "Request throughput (req/s)"), ("output_throughput", "Output throughput (tok/s)"),
            ("request_goodput", "Goodput (req/s within SLOs)"), ("slo_attainment", "Share of requests within SLOs"),
            ("p99_ttft_ms", "p99 TTFT (ms)"), ("p99_tpot_ms", "p99 TPOT (ms)"), ("p99_itl_ms", "p99 ITL (ms)"),
            ("p99_e2el_ms", "p99 E2EL (ms)"), ("num_preemptions", "Preemptions"),
            ("kv_cache_usage_mean", "KV cache usage, mean"), ("kv_internal_frag_frac", "KV internal fragmentation"),
            ("prefix_cache_hit_rate", "Prefix cache hit rate"), ("num_gpu_blocks", "GPU KV blocks"),
            ("price_per_hour_usd", "Price (USD/h)"), ("usd_per_million_output_tokens", "USD per million output tokens"))


def _headline_table(summary: dict[str, Any]) -> str:
    rows = [{"metric": label, "value": summary[k]} for k, label in HEADLINE if summary.get(k) is not None]
    return table_html(pd.DataFrame(rows)) if rows else ""


def run_summary(data: ReportData) -> Section | None:
    """A single run: what was simulated and how it went, in one sentence and a table."""
    s = data.summary
    if data.kind != "run" or not s:
        return None
    text = (f"{esc(s.get('model'))} on {esc(s.get('num_replicas', 1))}× TP{esc(s.get('tensor_parallel_size', 1))} "
            f"{esc(s.get('gpu'))} served {fmt(s.get('completed'))} requests at {fmt(s.get('request_throughput'))} req/s "
            f"with p99 TTFT {fmt(s.get('p99_ttft_ms'))} ms and p99 TPOT {fmt(s.get('p99_tpot_ms'))} ms")
    if s.get("slo_attainment") is not None:
        text += f"; {float(s['slo_attainment']) * 100:.1f}% of requests met every SLO"
    return Section("Summary", f'<p class="lead">{text}.</p>', [], [_headline_table(s)])


def sweep_overview(data: ReportData) -> Section | None:
    """A sweep: the best configuration by goodput (or throughput) and a table of the leaders."""
    df = data.configs
    if data.kind != "sweep" or df is None or df.empty:
        return None
    key = "request_goodput" if "request_goodput" in df and df["request_goodput"].notna().any() else "request_throughput"
    ranked = df.sort_values(key, ascending=False)
    best = ranked.iloc[0]
    names = [a for a in data.axes if a in df]
    n_points = 0 if data.points is None else len(data.points)
    n_failed = 0 if data.failed is None else len(data.failed)
    what = "goodput (requests/s meeting every SLO)" if key == "request_goodput" else "request throughput"
    lead = (f"{n_points} points finished{f', {n_failed} failed' if n_failed else ''}. The highest {what}, "
            f"{fmt(float(best[key]))} req/s, comes from {config_labels(ranked.head(1), names)[0]}"
            f"{f' (p99 TTFT {fmt(float(best.p99_ttft_ms))} ms)' if 'p99_ttft_ms' in best else ''}.")
    cols = [*names, key, "request_throughput", "p99_ttft_ms", "p99_tpot_ms", "p99_e2el_ms", "num_preemptions",
            "usd_per_million_output_tokens"]
    cols = list(dict.fromkeys(c for c in cols if c in ranked))
    table = table_html(ranked[cols].head(15), caption=f"Top {min(15, len(ranked))} of {len(ranked)} configurations by {what}",
                       highlight_first=True)
    return Section("Best configurations", f'<p class="lead">{esc(lead)}</p>', [], [table])


def plan_recommendation(data: ReportData) -> Section | None:
    """The plan's recommendation in plain words, warnings, and the ranked candidates."""
    if data.kind != "plan" or data.plan is None:
        return None
    plan = data.plan
    intro = f'<p class="lead">{esc(plan.get("recommendation_text", ""))}</p>'
    slo = ", ".join(f"{plan.get('percentile', 'p99')} {k.replace('_ms', '').upper()} ≤ {v:g} ms"
                    for k, v in (plan.get("slo_ms") or {}).items())
    if plan.get("goodput"):
        slo += f", ≥ {plan['goodput'] * 100:g}% of requests within SLO"
    intro += f"<p>Target: {fmt(plan.get('target_rate'))} req/s; SLOs: {esc(slo)}; margin {fmt(plan.get('margin'))}.</p>"
    intro += "".join(f'<p class="warn">⚠ {esc(w)}</p>' for w in plan.get("warnings", []))
    tables = []
    if data.candidates is not None and len(data.candidates):
        names = [a["name"] for a in plan.get("axes", [])]
        cols = ["rank", *names, "gpu", "capacity_rps", "cliff_rps", "replicas", "gpus_total", "hourly_cost_usd",
                "usd_per_million_output_tokens", "p99_ttft_ms", "p99_tpot_ms", "limit_reason"]
        heads = {"capacity_rps": "capacity (req/s per replica)", "cliff_rps": "preemption cliff (req/s)",
                 "hourly_cost_usd": "USD/h", "usd_per_million_output_tokens": "USD/M output tok",
                 "limit_reason": "what limits it", "gpus_total": "GPUs"}
        cols = [c for c in cols if c in data.candidates]
        tables.append(table_html(data.candidates[cols].head(20), heads, caption="Candidates, cheapest first",
                                 highlight_first=True))
    return Section("Recommendation", intro, [], tables)


def plan_sensitivity(data: ReportData) -> Section | None:
    """Change in sustainable load when each axis moves one step from the recommended point."""
    rows = (data.plan or {}).get("sensitivity") or []
    if not rows:
        return None
    df = pd.DataFrame(rows)
    labels = [esc(f"{r['axis']}: {r['from']} → {r['to']}") for _, r in df.iterrows()]
    fig = go.Figure(go.Bar(y=labels, x=df["delta_capacity_pct"], orientation="h",
                           marker_color=[PALETTE[2] if v >= 0 else PALETTE[3] for v in df["delta_capacity_pct"]]))
    style(fig, "Which settings matter: one step from the recommendation", "Change in sustainable load (%)",
          "Setting changed", height=140 + 32 * len(df))
    top = df.iloc[0]
    reading = (f"Moving {top['axis']} from {top['from']} to {top['to']} changes the sustainable load the most "
               f"({float(top['delta_capacity_pct']):+.0f}%).")
    table = table_html(df[["axis", "from", "to", "capacity_rps", "delta_capacity_pct", "hourly_cost_usd",
                           "delta_hourly_cost_usd"]],
                       {"capacity_rps": "capacity (req/s)", "delta_capacity_pct": "Δ capacity (%)",
                        "hourly_cost_usd": "USD/h at target", "delta_hourly_cost_usd": "Δ USD/h"})
    return Section("Which settings matter", "", [Chart(fig, reading)], [table])


def failures(data: ReportData) -> Section | None:
    """Points that could not run, with their one-line reasons."""
    if data.failed is None or data.failed.empty:
        return None
    cols = [c for c in [*data.axes, "error"] if c in data.failed]
    return Section("Points that failed", "", [], [table_html(data.failed[cols].head(50))])
