"""A sweep's results folder: one Parquet part per finished point, a consolidated table, a manifest.

Layout::

    OUT/sweep.json            manifest: base scenario hash, axes, point count, points with steps
    OUT/scenario.yaml         the base scenario (with its sweep section)
    OUT/points/<id>.parquet   one row per finished point, written atomically as it completes
    OUT/steps/<id>.parquet    step tables of the few points the report shows
    OUT/sweep.parquet         every finished point of the grid in grid order (rewritten at the end
                              and on interrupt; `load_table` falls back to the parts)

What always holds: a part file exists only once its point finished (write to a temporary name,
then rename), so a killed sweep loses no finished point and `done_ids` is exactly what to skip.
Replications over seeds are summarised by `aggregate_seeds`: mean and Student-t confidence
half-width per configuration and metric.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sim.errors import ScenarioError
from sim.results import atomic_write_parquet, atomic_write_text
from sim.sweep import SEED_AXIS, Axis, PointResult

ID_COLUMNS = ("point_id", "point_index", "status", "error", "wall_s")


def base_hash(base_raw: dict[str, Any]) -> str:
    """Identity of the base scenario (sweep and plan sections excluded): resume only onto the same base."""
    body = {k: v for k, v in base_raw.items() if k not in ("sweep", "plan")}
    return hashlib.sha1(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SweepStore:
    """Reads and writes one sweep's results folder."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.points_dir = self.out / "points"
        self.steps_dir = self.out / "steps"

    def open(self, base_raw: dict[str, Any], axes: Sequence[Axis], num_points: int, steps_ids: Iterable[str],
             file: str, fresh: bool = False) -> set[str]:
        """Create or resume the folder; return the ids of points already finished."""
        manifest_path = self.out / "sweep.json"
        digest = base_hash(base_raw)
        if manifest_path.exists() and not fresh:
            old = json.loads(manifest_path.read_text())
            if old.get("base_hash") != digest:
                raise ScenarioError(str(self.out), "", "holds a sweep of a different base scenario; "
                                    "pass --fresh to start over or choose another --out")
        if fresh:
            for d in (self.points_dir, self.steps_dir):
                for p in d.glob("*.parquet"):
                    p.unlink()
            (self.out / "sweep.parquet").unlink(missing_ok=True)
        self.points_dir.mkdir(parents=True, exist_ok=True)
        self.steps_dir.mkdir(parents=True, exist_ok=True)
        manifest = {"kind": "sweep", "scenario": file, "base_hash": digest, "num_points": num_points,
                    "axes": [{"name": a.name, "path": a.path, "values": list(a.values)} for a in axes],
                    "steps_points": sorted(steps_ids)}
        atomic_write_text(manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")
        atomic_write_text(self.out / "scenario.yaml", yaml.safe_dump(base_raw, sort_keys=False))
        return self.done_ids()

    def done_ids(self) -> set[str]:
        return {p.stem for p in self.points_dir.glob("*.parquet")}

    def add(self, result: PointResult) -> None:
        """Store one finished point (steps first: a row on disk means everything of it is there)."""
        pid = result.row["point_id"]
        if result.steps is not None:
            atomic_write_parquet(self.steps_dir / f"{pid}.parquet", result.steps)
        atomic_write_parquet(self.points_dir / f"{pid}.parquet", pd.DataFrame([result.row]))

    def consolidate(self, ids_in_order: Sequence[str] | None = None) -> pd.DataFrame:
        """Write sweep.parquet from the parts (grid order; only the grid's points when ids are given)."""
        table = read_parts(self.points_dir, ids_in_order)
        atomic_write_parquet(self.out / "sweep.parquet", table)
        return table


def read_parts(points_dir: Path, ids: Sequence[str] | None = None) -> pd.DataFrame:
    paths = [points_dir / f"{i}.parquet" for i in ids] if ids is not None else sorted(points_dir.glob("*.parquet"))
    frames = [pd.read_parquet(p) for p in paths if p.exists()]
    frames = [f.dropna(axis=1, how="all") for f in frames]     # all-null columns carry no dtype
    if not frames:
        return pd.DataFrame(columns=list(ID_COLUMNS))
    table = pd.concat(frames, ignore_index=True)
    return table.sort_values("point_index", kind="stable").reset_index(drop=True)


def load_table(out: Path) -> pd.DataFrame:
    """The sweep's results table: sweep.parquet, or the parts when the sweep was interrupted."""
    out = Path(out)
    points = out / "points"
    table_path = out / "sweep.parquet"
    if table_path.exists() and (not points.exists()
                                or table_path.stat().st_mtime >= max((p.stat().st_mtime for p in points.iterdir()),
                                                                     default=0.0)):
        return pd.read_parquet(table_path)
    return read_parts(points)


def t_quantile(confidence: float, dof: int) -> float:
    """Two-sided Student-t critical value: P(|T| <= q) = confidence with `dof` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2.0, dof))


def ci_halfwidth(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> float:
    """Half-width of the confidence interval of the mean of `values` (NaN with fewer than 2)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return math.nan
    return t_quantile(confidence, x.size - 1) * float(np.std(x, ddof=1)) / math.sqrt(x.size)


def metric_columns(table: pd.DataFrame, axis_names: Iterable[str]) -> list[str]:
    """Numeric result columns (not axes, ids or timings)."""
    skip = set(axis_names) | set(ID_COLUMNS) | {SEED_AXIS}
    return [c for c in table.columns if c not in skip and pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def aggregate_seeds(table: pd.DataFrame, axis_names: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration (axes other than seed): mean, `<metric>_ci` half-width, `num_seeds`."""
    ok = table[table["status"] == "ok"] if "status" in table else table
    groups = [a for a in axis_names if a != SEED_AXIS and a in ok.columns]
    metrics = metric_columns(ok, axis_names)
    if ok.empty:
        return pd.DataFrame(columns=[*groups, "num_seeds", *metrics])
    keyed = ok.assign(_key=ok[groups].astype(str).agg("|".join, axis=1)) if groups else ok.assign(_key="all")
    rows = []
    for _, g in keyed.groupby("_key", sort=False):
        row: dict[str, Any] = {a: g[a].iloc[0] for a in groups}
        row["num_seeds"] = len(g)
        for m in metrics:
            vals = g[m].to_numpy(float)
            row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            row[f"{m}_ci"] = ci_halfwidth(vals, confidence)
        rows.append(row)
    return pd.DataFrame(rows)
