"""Build `report.html` for a results folder (a run, a sweep or a plan).

Each section function returns a `Section` or None when the folder has no data for it, so one
builder serves every kind of folder: a single run gets its summary and the over-time charts, a
sweep adds curves, heatmaps, fragmentation, swap, Pareto and confidence intervals, a plan opens
with the recommendation.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from pathlib import Path

from reports import (
    charts_fleet,
    charts_grid,
    charts_kv,
    charts_latency,
    charts_moe,
    charts_offload,
    charts_sessions,
    charts_validation,
    sections,
)
from reports.charts_pp import pipeline as pipeline_parallelism
from reports.charts_spec import spec_decode
from reports.data import ReportData, load
from reports.html import Section, render_page
from sim.results import atomic_write_text

SECTIONS: tuple[Callable[[ReportData], Section | None], ...] = (
    sections.plan_recommendation,
    sections.run_summary,
    charts_validation.validation,
    sections.sweep_overview,
    charts_latency.latency_curves,
    charts_kv.over_time,
    charts_kv.fragmentation,
    charts_kv.swap,
    charts_moe.moe,
    charts_offload.offload,
    charts_fleet.routing,
    charts_fleet.slo_classes,
    charts_sessions.turns,
    charts_fleet.autoscaling,
    charts_fleet.disaggregation,
    spec_decode,
    pipeline_parallelism,
    charts_grid.heatmaps,
    charts_latency.cost_pareto,
    sections.plan_sensitivity,
    charts_latency.confidence_table,
    sections.failures,
)


def build_sections(data: ReportData) -> list[Section]:
    """Every section the data supports, in reading order."""
    return [s for s in (fn(data) for fn in SECTIONS) if s is not None]


def build_report(out_dir: str | Path, html_path: str | Path | None = None) -> Path:
    """Write the report for `out_dir` (default `out_dir/report.html`) and return its path."""
    out = Path(out_dir)
    data = load(out)
    kind = {"run": "Run", "sweep": "Sweep", "plan": "Capacity plan"}[data.kind]
    desc = data.scenario.get("description") or ""
    subtitle = f"{kind} report" + (f" · {desc}" if desc else "")
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = render_page(f"pagesim · {data.name}", subtitle, build_sections(data),
                       f"pagesim · {out.resolve().name} · built {stamp} · opens offline")
    path = Path(html_path) if html_path else out / "report.html"
    atomic_write_text(path, page)
    return path
