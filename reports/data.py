"""Reading a results folder into what the report's sections need.

Three kinds of folder, told apart by their files:

* a run (`pagesim run`): summary.json, steps.parquet, requests.parquet, scenario.yaml;
* a sweep (`pagesim sweep`): sweep.json, sweep.parquet (or points/), steps/<point>.parquet;
* a plan (`pagesim plan`): plan.json, candidates.parquet, evaluations.parquet, recommended/.

Sections read only `ReportData`; a field that is None means "no data": its sections are omitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sim.errors import ScenarioError
from sim.sweep import LOAD_AXES, SEED_AXIS
from sim.sweep_store import aggregate_seeds, load_table

MAX_STEP_POINTS = 1500          # time bins kept for over-time charts (keeps the file small)


@dataclass
class ReportData:
    """Everything a report can show; None where the folder has no such data."""

    out: Path
    kind: str                                      # run | sweep | plan
    name: str
    scenario: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None          # the run's (or recommended run's) summary
    steps: pd.DataFrame | None = None              # binned step table of the chosen run
    steps_label: str = ""
    points: pd.DataFrame | None = None             # sweep: one row per point (status ok)
    failed: pd.DataFrame | None = None             # sweep: points that failed
    configs: pd.DataFrame | None = None            # per configuration x load: means and *_ci
    axes: list[str] = field(default_factory=list)  # swept axes (seed excluded) with >1 value
    axis_values: dict[str, list[Any]] = field(default_factory=dict)
    load_axis: str | None = None                   # the x of throughput-latency curves
    num_seeds: int = 1
    plan: dict[str, Any] | None = None
    candidates: pd.DataFrame | None = None
    validation: dict[str, Any] | None = None       # validation.json (pagesim validate --engine vllm)
    validation_steps: pd.DataFrame | None = None   # validation_steps.csv: engine_* / pagesim_* per step
    validation_requests: pd.DataFrame | None = None  # validation_requests.csv: side, metric, seconds


def config_label(row: pd.Series | dict[str, Any], names: list[str]) -> str:
    """A configuration's name from its axis values, e.g. 'block_size=16, hardware=H100-SXM'."""
    return ", ".join(f"{n}={row[n]}" for n in names) or "base"


def config_labels(df: pd.DataFrame, names: list[str]) -> list[str]:
    """`config_label` for every row, keeping each column's own type (iterrows would turn 4 into 4.0)."""
    if not names:
        return ["base"] * len(df)
    return [config_label(r, names) for r in df[names].to_dict("records")]


def bin_steps(steps: pd.DataFrame, max_points: int = MAX_STEP_POINTS) -> pd.DataFrame:
    """Replica 0's steps, averaged (duration-weighted) into at most `max_points` time bins."""
    if steps.empty:
        return steps
    s = steps[steps["replica"] == steps["replica"].min()] if "replica" in steps else steps
    s = s.sort_values("start_s")
    t = s["start_s"].to_numpy()
    edges = pd.interval_range(t.min(), t.max() + 1e-9, periods=min(max_points, len(s))) if len(s) > max_points else None
    if edges is None:
        return s.reset_index(drop=True)
    w = s["duration_s"].clip(lower=1e-12)
    cols = [c for c in s.columns if c not in ("replica", "start_s", "duration_s")]
    grouped = s[cols].mul(w, axis=0).groupby(pd.cut(s["start_s"], edges), observed=True).sum()
    weights = w.groupby(pd.cut(s["start_s"], edges), observed=True).sum()
    out = grouped.div(weights, axis=0)
    out["start_s"] = [iv.left for iv in out.index]
    return out.reset_index(drop=True)


def _read_steps(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    df = pd.read_parquet(path)
    return bin_steps(df) if not df.empty else None


def load(out: Path) -> ReportData:
    """Read a results folder of any kind."""
    out = Path(out)
    scenario = yaml.safe_load((out / "scenario.yaml").read_text()) if (out / "scenario.yaml").exists() else {}
    scenario = scenario if isinstance(scenario, dict) else {}
    name = str(scenario.get("name") or out.name)
    if (out / "plan.json").exists():
        return _load_plan(out, name, scenario)
    if (out / "sweep.json").exists():
        return _load_sweep(out, name, scenario)
    if (out / "summary.json").exists():
        data = ReportData(out, "run", name, scenario, summary=json.loads((out / "summary.json").read_text()))
        data.steps, data.steps_label = _read_steps(out / "steps.parquet"), "this run"
        if (out / "validation.json").exists():
            data.validation = json.loads((out / "validation.json").read_text())
            for attr, name in (("validation_steps", "validation_steps.csv"), ("validation_requests", "validation_requests.csv")):
                if (out / name).exists():
                    setattr(data, attr, pd.read_csv(out / name))
        return data
    raise ScenarioError(str(out), "", "not a pagesim results folder (no summary.json, sweep.json or plan.json)")


def _load_sweep(out: Path, name: str, scenario: dict[str, Any]) -> ReportData:
    manifest = json.loads((out / "sweep.json").read_text())
    table = load_table(out)
    ok = table[table["status"] == "ok"] if "status" in table else table
    failed = table[table["status"] != "ok"] if "status" in table else None
    all_axes = [a["name"] for a in manifest["axes"]]
    values = {a["name"]: a["values"] for a in manifest["axes"]}
    axes = [a for a in all_axes if a != SEED_AXIS and len(values[a]) > 1]
    data = ReportData(out, "sweep", name, scenario, points=ok.reset_index(drop=True),
                      failed=failed if failed is not None and len(failed) else None,
                      axes=axes, axis_values=values,
                      load_axis=next((a for a in LOAD_AXES if a in axes), None),
                      num_seeds=len(values.get(SEED_AXIS, [0])))
    data.configs = aggregate_seeds(ok, all_axes) if len(ok) else None
    for pid in manifest.get("steps_points", []):
        steps = _read_steps(out / "steps" / f"{pid}.parquet")
        if steps is not None:
            row = table[table["point_id"] == pid]
            label = config_labels(row, [a for a in all_axes if a in row])[0] if len(row) else pid
            data.steps, data.steps_label = steps, label
            data.summary = row.iloc[0].to_dict() if len(row) else None
            break
    return data


def _load_plan(out: Path, name: str, scenario: dict[str, Any]) -> ReportData:
    plan = json.loads((out / "plan.json").read_text())
    axes_all = [a["name"] for a in plan.get("axes", [])]
    values = {a["name"]: a["values"] for a in plan.get("axes", [])}
    cands = pd.read_parquet(out / "candidates.parquet") if (out / "candidates.parquet").exists() else None
    evals = pd.read_parquet(out / "evaluations.parquet") if (out / "evaluations.parquet").exists() else None
    data = ReportData(out, "plan", name, scenario, plan=plan, candidates=cands, axis_values=values,
                      axes=[a for a in axes_all if len(values[a]) > 1], load_axis="rate")
    if evals is not None and len(evals):
        data.configs = evals.rename(columns={"rate_rps": "rate"})
    rec = out / "recommended"
    if (rec / "summary.json").exists():
        data.summary = json.loads((rec / "summary.json").read_text())
        data.steps = _read_steps(rec / "steps.parquet")
        best = plan.get("recommendation") or {}
        data.steps_label = "recommended: " + config_label(best, axes_all) if best else "recommended"
    return data
