"""Heatmaps over two sweep axes: throughput (or goodput) and p99 TTFT on the grid."""

from __future__ import annotations

import plotly.graph_objects as go

from reports.data import ReportData
from reports.html import Chart, Section, esc, fmt, style

HEAT_METRICS = (("request_goodput", "Goodput", "requests/s meeting every SLO", "Viridis", True),
                ("request_throughput", "Throughput", "requests/s", "Viridis", True),
                ("p99_ttft_ms", "p99 TTFT", "ms", "Reds", False))


def heatmaps(data: ReportData) -> Section | None:
    """The first two swept axes (seed excluded) as a grid; other axes held at their first value,
    the load axis at its highest (where settings differ most)."""
    df = data.configs
    if df is None or data.kind != "sweep" or len(data.axes) < 2:
        return None
    ax_x, ax_y = data.axes[1], data.axes[0]
    held = []
    for a in data.axes[2:]:
        if a in df and data.axis_values.get(a):
            vals = data.axis_values[a]
            v = max(vals) if a == data.load_axis and all(isinstance(x, int | float) for x in vals) else vals[0]
            df = df[df[a] == v]
            held.append(f"{a}={v}")
    if df.empty:
        return None
    charts = []
    metrics = [m for m in HEAT_METRICS if m[0] in df and df[m[0]].notna().any()]
    if any(m[0] == "request_goodput" for m in metrics):
        metrics = [m for m in metrics if m[0] != "request_throughput"]
    for col, short, unit, scale, higher_better in metrics[:2]:
        grid = df.pivot_table(index=ax_y, columns=ax_x, values=col, aggfunc="mean", sort=False)
        grid = grid.reindex(index=[v for v in data.axis_values[ax_y] if v in grid.index],
                            columns=[v for v in data.axis_values[ax_x] if v in grid.columns])
        xs = [esc(v) for v in grid.columns]
        ys = [esc(v) for v in grid.index]
        text = [[fmt(v) for v in row] for row in grid.to_numpy()]
        fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=xs, y=ys, colorscale=scale,
                                   text=text, texttemplate="%{text}", colorbar={"title": {"text": esc(unit)}},
                                   hovertemplate=f"{esc(ax_x)}=%{{x}}<br>{esc(ax_y)}=%{{y}}<br>{esc(short)} %{{z:.3g}} {esc(unit)}<extra></extra>"))
        fig.update_xaxes(type="category")
        fig.update_yaxes(type="category")
        style(fig, f"{short} ({unit}) over {ax_y} × {ax_x}", ax_x, ax_y, height=360 + 12 * len(ys))
        stacked = grid.stack()
        if stacked.empty:
            continue
        best = stacked.idxmax() if higher_better else stacked.idxmin()
        reading = (f"The {'highest' if higher_better else 'lowest'} {short}, {fmt(float(stacked[best]))} {unit}, is at "
                   f"{ax_y}={best[0]} and {ax_x}={best[1]}" + (f" (with {', '.join(held)})." if held else "."))
        charts.append(Chart(fig, reading))
    if not charts:
        return None
    seeds = f" Values are means over {data.num_seeds} seeds." if data.num_seeds > 1 else ""
    intro = f"<p>Each cell is one configuration of the sweep.{esc(seeds)}</p>"
    return Section("Heatmaps over two sweep axes", intro, charts)
