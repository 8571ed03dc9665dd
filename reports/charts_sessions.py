"""Multi-turn sessions: time to first token and prefix-cache hits by turn index.

Every turn resends the conversation so far; with prefix caching the earlier turns' blocks are
reused and TTFT stays flat-ish, without it each turn recomputes a longer context.  Shown only when
the run's workload has sessions (`ttft_ms_by_turn` in summary.json).
"""

from __future__ import annotations

import plotly.graph_objects as go

from reports.data import ReportData
from reports.html import PALETTE, Chart, Section, fmt, style


def turns(data: ReportData) -> Section | None:
    s = data.summary
    by_turn = s.get("ttft_ms_by_turn") if s else None
    if not s or not by_turn or not by_turn.get("median"):
        return None
    x = list(range(1, len(by_turn["median"]) + 1))      # turns numbered from 1 for readers
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=by_turn["median"], name="median TTFT", mode="lines+markers",
                             line={"color": PALETTE[0]}))
    fig.add_trace(go.Scatter(x=x, y=by_turn["p99"], name="p99 TTFT", mode="lines+markers",
                             line={"color": PALETTE[0], "dash": "dot"}))
    hit = s.get("prefix_cache_hit_rate_by_turn") or []
    fig.add_trace(go.Bar(x=x, y=[None if h is None else h * 100 for h in hit], name="prefix-cache hit rate",
                         marker_color=PALETTE[2], opacity=0.35, yaxis="y2"))
    style(fig, "Time to first token and prefix-cache hits by turn", "Turn of the conversation", "TTFT (ms)")
    fig.update_layout(yaxis2={"title": "Prompt tokens found in the prefix cache (%)", "overlaying": "y",
                              "side": "right", "range": [0, 100]})
    med = [m for m in by_turn["median"] if m is not None]
    counts = by_turn.get("count") or []
    reading = (f"Median TTFT goes from {fmt(med[0])} ms on the first turn to {fmt(med[-1])} ms on turn {len(med)}"
               + (f"; from turn 2 on, {fmt(100 * min(h for h in hit[1:] if h is not None), 2)}-"
                  f"{fmt(100 * max(h for h in hit[1:] if h is not None), 2)}% of each prompt comes from the cache."
                  if any(h is not None for h in hit[1:]) else ".")
               + (f"  Later turns are rarer: {counts[-1]} conversations reached turn {len(counts)}." if counts else ""))
    intro = (f"<p>{int(s.get('num_sessions', 0))} conversations, {int(s.get('num_turns', 0))} turns "
             f"({int(s.get('num_turns_sent', 0))} sent); each turn resends every earlier question and answer, "
             f"and is sent a think time after the previous answer ended.  "
             f"{int(s.get('num_sessions_ended_at_max_model_len', 0))} conversations ended early because the next "
             "turn would not fit in max_model_len.</p>")
    return Section("Multi-turn sessions", intro, [Chart(fig, reading)])
