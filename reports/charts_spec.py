"""Speculative decoding: how often drafts are accepted, how many tokens a step emits, what it
does to TPOT and ITL.  Only for runs with `engine.speculative_config` (summary keys
`spec_decode_*`, named after vLLM's counters)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.data import ReportData
from reports.html import PALETTE, Chart, Section, esc, fmt, style, table_html


def _configured_rates(data: ReportData) -> list[float] | None:
    """Unconditional per-position acceptance the scenario asked for: Π_{j<=i} r_j."""
    raw = (data.scenario.get("engine") or {}).get("speculative_config")
    if not isinstance(raw, dict):
        return None
    try:
        from sim.schema import Ctx, build
        from sim.spec_decode import SpeculativeConfig
        rates = build(SpeculativeConfig, raw, Ctx("")).rates
    except Exception:            # a report never fails on a scenario it cannot re-read
        return None
    return [float(v) for v in np.cumprod(rates)]


def spec_decode(data: ReportData) -> Section | None:
    s = data.summary
    if not s or not s.get("spec_decode_num_drafts"):
        return None
    drafts = int(s["spec_decode_num_drafts"])
    per_pos = [int(v) for v in s["spec_decode_num_accepted_tokens_per_pos"]]
    k = len(per_pos)
    pos = list(range(1, k + 1))
    measured = [n / drafts for n in per_pos]
    fig = go.Figure(go.Bar(x=pos, y=measured, name="simulated", marker_color=PALETTE[0]))
    want = _configured_rates(data)
    if want is not None and len(want) == k:
        fig.add_trace(go.Scatter(x=pos, y=want, name="acceptance model", mode="markers+lines",
                                 marker={"color": PALETTE[1], "size": 10}))
    style(fig, "Acceptance per draft position", "Draft position", "Fraction of drafts accepted up to it")
    fig.update_layout(xaxis={"dtick": 1}, yaxis={"range": [0, 1.05]})
    # accepted length j (0..k): drafts that accepted exactly j = per_pos[j-1] - per_pos[j]
    counts = [drafts - per_pos[0]] + [per_pos[j - 1] - (per_pos[j] if j < k else 0) for j in range(1, k + 1)]
    fig2 = go.Figure(go.Bar(x=[j + 1 for j in range(k + 1)], y=[c / drafts for c in counts], marker_color=PALETTE[2]))
    style(fig2, "Tokens a sequence emits per verification step", "Tokens (accepted drafts + 1)", "Fraction of steps")
    fig2.update_layout(xaxis={"dtick": 1})
    mal = s["spec_decode_mean_acceptance_length"]
    intro = (f"<p>k = {k} draft tokens per sequence per step; {drafts:,} drafts verified. "
             f"Mean acceptance length {fmt(mal)} tokens per sequence per step (vLLM's definition, bonus token "
             f"included), draft acceptance rate {fmt(s['spec_decode_acceptance_rate'] * 100)} %. "
             f"A step verified {fmt(s.get('spec_decode_mean_seqs_per_step'))} sequences and emitted "
             f"{fmt(s.get('spec_decode_mean_tokens_per_step'))} tokens on average. TPOT counts tokens, ITL counts "
             "streamed chunks (one per step, as <code>vllm bench serve</code> sees them), so with speculation "
             "TPOT falls below ITL. Compare with the same traffic without speculation: run the scenario again "
             "with <code>--set engine.speculative_config=null</code>.</p>")
    rows = pd.DataFrame({
        "metric": ["mean TPOT (ms)", "p99 TPOT (ms)", "mean ITL (ms)", "p99 ITL (ms)", "output throughput (tok/s)",
                   "mean acceptance length", "draft acceptance rate"],
        "value": [fmt(s.get("mean_tpot_ms")), fmt(s.get("p99_tpot_ms")), fmt(s.get("mean_itl_ms")),
                  fmt(s.get("p99_itl_ms")), fmt(s.get("output_throughput")), fmt(mal),
                  fmt(s["spec_decode_acceptance_rate"])],
    })
    reading = ("Bars are the share of drafts whose first i tokens were all accepted (vLLM's per-position "
               "acceptance rate); the line is what the acceptance model implies.")
    return Section("Speculative decoding", intro,
                   [Chart(fig, reading),
                    Chart(fig2, f"Each verification step emits 1 to {k + 1} tokens per sequence; the mean is the "
                                f"mean acceptance length ({esc(fmt(mal))}).")],
                   [table_html(rows, caption="Latency and speculation counters of this run")])
