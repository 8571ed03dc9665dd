"""Sweeps: a grid of scenario variants, each a *point* identified by a stable hash of its overrides.

A `sweep:` section (or `--axis` flags) names axes and their values::

    sweep:
      block_size: [8, 16, 32]          # engine.block_size
      rate: [2, 4, 8, 16]              # workload.arrival.rate (requests/s)
      seeds: 3                         # run.seed = base seed + 0, 1, 2 (or a list of seeds)
      engine.watermark: [0.0, 0.01]    # any dotted key path is an axis too

The grid is the Cartesian product, in the order the axes are written, seeds innermost.  A point's
overrides are applied to the base scenario's raw mapping with `sim.config.apply_override`, so a
point is exactly what `pagesim run BASE --set k=v ...` would simulate.  What always holds: a point's
id depends only on its overrides (sorted key paths and JSON values), never on its position or the
run, so an interrupted sweep can be resumed by skipping ids already stored.  Running a point
(`run_point`) is a pure function of its task: the same task gives the same row, bit for bit, on any
executor (`sim.sweep_exec`).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from sim.config import SECTIONS, apply_override, scenario_from_dict
from sim.errors import ScenarioError

# axis name -> (key path, expected kind).  Kinds: int, number, bool, str, rate (number or 'inf'),
# int? (int or null: vLLM's default).  Aliases point at the same path.
AXES: dict[str, tuple[str, str]] = {
    "block_size": ("engine.block_size", "int"),
    "kv_cache_dtype": ("engine.kv_cache_dtype", "str"),
    "swap_space": ("engine.swap_space", "number"),
    "kv_offloading_size": ("engine.kv_offloading_size", "number"),
    "max_num_seqs": ("engine.max_num_seqs", "int?"),
    "max_num_batched_tokens": ("engine.max_num_batched_tokens", "int?"),
    "enable_chunked_prefill": ("engine.enable_chunked_prefill", "bool"),
    "enable_prefix_caching": ("engine.enable_prefix_caching", "bool"),
    "allocator": ("engine.allocator", "str"),
    "scheduler": ("engine.scheduler", "str"),
    "preemption_mode": ("engine.preemption_mode", "str"),
    "gpu_memory_utilization": ("engine.gpu_memory_utilization", "number"),
    "tensor_parallel_size": ("engine.tensor_parallel_size", "int"),
    "pipeline_parallel_size": ("engine.pipeline_parallel_size", "int"),
    "num_replicas": ("engine.num_replicas", "int"),
    "router": ("engine.router", "str"),
    "pd_layout": ("engine.pd_layout", "str"),
    "router_scrape_interval_s": ("engine.router_scrape_interval_s", "number"),
    "rate": ("workload.arrival.rate", "rate"),
    "max_concurrency": ("workload.arrival.max_concurrency", "int"),
    "hardware": ("hardware.gpu", "str"),
    "seed": ("run.seed", "int"),
}
ALIASES = {"request_rate": "rate", "concurrency": "max_concurrency", "gpu": "hardware",
           "seeds": "seed", "tp": "tensor_parallel_size", "pp": "pipeline_parallel_size", "replicas": "num_replicas"}
SEED_AXIS = "seed"
LOAD_AXES = ("rate", "max_concurrency")
_KIND_TEXT = {"int": "integers", "int?": "integers or null", "number": "numbers", "bool": "true/false values",
              "str": "strings", "rate": "numbers of requests/s (or 'inf')", "any": "values"}


@dataclass(frozen=True, slots=True)
class Axis:
    """One swept setting: its column name in the results, its key path and its values (in order)."""

    name: str
    path: str
    values: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Point:
    """One grid point: the overrides applied to the base scenario, and their axis labels."""

    index: int                     # position in the grid (row order of the results table)
    id: str                        # stable hash of the overrides: resume key
    overrides: dict[str, Any]      # key path -> value
    labels: dict[str, Any]         # axis name -> value (the results table's axis columns)


@dataclass(frozen=True, slots=True)
class PointTask:
    """Everything a worker needs to run one point; picklable, so it travels to processes and Ray."""

    point: Point
    base_raw: dict[str, Any]
    file: str
    keep_steps: bool = False       # return the per-step table (only points the report shows)
    record_steps: bool = True      # simulate with the step recorder on (kv_* summary metrics need it)


@dataclass
class PointResult:
    """A finished point: one results-table row and, when asked for, its step table."""

    row: dict[str, Any]
    steps: pd.DataFrame | None = field(default=None)


def _check_value(kind: str, v: Any) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "int?":
        return v is None or _check_value("int", v)
    if kind == "number":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if kind == "rate":
        return _check_value("number", v) or (isinstance(v, str) and v.lower() in ("inf", "infinity"))
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    return True


def parse_axes(section: Mapping[str, Any] | None, file: str, base_raw: Mapping[str, Any],
               where: str = "sweep") -> list[Axis]:
    """Validate a `sweep:`-style mapping into axes.  One-line ScenarioError naming file and key."""
    if section is None:
        return []
    if not isinstance(section, Mapping):
        raise ScenarioError(file, where, "expected a mapping of axis -> list of values", section, True)
    axes: list[Axis] = []
    seen: set[str] = set()
    for key, values in section.items():
        key_s = str(key)
        where_k = f"{where}.{key_s}"
        name = ALIASES.get(key_s, key_s)
        if name in AXES:
            path, kind = AXES[name]
        elif "." in name and name.split(".", 1)[0] in SECTIONS:
            path, kind = name, "any"
        else:
            import difflib
            hint = difflib.get_close_matches(key_s, [*AXES, *ALIASES], n=1)
            msg = f"unknown axis; did you mean '{hint[0]}'?" if hint else \
                f"unknown axis; expected one of {', '.join(AXES)} or a key path like engine.watermark"
            raise ScenarioError(file, where_k, msg)
        if name == SEED_AXIS and isinstance(values, int) and not isinstance(values, bool):
            if values < 1:
                raise ScenarioError(file, where_k, "expected a number of seeds >= 1 or a list of seeds", values, True)
            base = int(base_raw.get("run", {}).get("seed", 0) or 0)
            values = list(range(base, base + values))
        if not isinstance(values, list):
            values = [values] if not isinstance(values, dict) else values
        if not isinstance(values, list) or not values:
            raise ScenarioError(file, where_k, f"expected a non-empty list of {_KIND_TEXT[kind]}", values, True)
        bad = [v for v in values if not _check_value(kind, v)]
        if bad:
            raise ScenarioError(file, where_k, f"expected a list of {_KIND_TEXT[kind]}", bad[0], True)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ScenarioError(file, where_k, "values repeat", values, True)
        if path in seen:
            raise ScenarioError(file, where_k, f"sets {path}, which another axis already sweeps")
        seen.add(path)
        axes.append(Axis(name, path, tuple(values)))
    seeds = [a for a in axes if a.name == SEED_AXIS]
    return [a for a in axes if a.name != SEED_AXIS] + seeds   # seeds innermost: replications adjacent


def point_id(overrides: Mapping[str, Any]) -> str:
    """Stable identity of a point: a hash of its sorted key paths and JSON-encoded values."""
    text = json.dumps(sorted(overrides.items()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def expand(axes: list[Axis]) -> list[Point]:
    """The Cartesian product of the axes, first axis outermost."""
    points = []
    for i, combo in enumerate(itertools.product(*(a.values for a in axes))):
        overrides = {a.path: v for a, v in zip(axes, combo, strict=True)}
        labels = {a.name: v for a, v in zip(axes, combo, strict=True)}
        points.append(Point(i, point_id(overrides), overrides, labels))
    return points


def point_raw(base_raw: Mapping[str, Any], overrides: Mapping[str, Any], file: str) -> dict[str, Any]:
    """The base scenario with one point's overrides applied (a deep copy; the base is untouched)."""
    raw = copy.deepcopy(dict(base_raw))
    raw.pop("sweep", None)
    raw.pop("plan", None)
    for path, value in overrides.items():
        apply_override(raw, f"{path}={json.dumps(value)}", file)
    return raw


def validate_points(base_raw: Mapping[str, Any], axes: list[Axis], file: str, where: str = "sweep") -> None:
    """Build every distinct value of every axis once, so a bad value fails before any work starts."""
    for axis in axes:
        for v in axis.values:
            try:
                scenario_from_dict(point_raw(base_raw, {axis.path: v}, file), file)
            except ScenarioError as e:
                raise ScenarioError(file, f"{where}.{axis.name}", f"value {v!r}: {e.message}") from None


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else v
    return v


def simulate(raw: dict[str, Any], file: str, record_steps: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run one scenario mapping; returns (summary, steps).  The default point body."""
    from sim.runner import run_scenario

    raw.setdefault("run", {})["record_steps"] = record_steps
    sc = scenario_from_dict(raw, file)
    res = run_scenario(sc)
    summary = dict(res.summary)
    summary["offered_rate_rps"] = sc.workload.arrival.rate_rps
    summary.update(queue_stats(res.requests))
    return summary, res.steps


def queue_stats(requests: pd.DataFrame) -> dict[str, float]:
    """Stability evidence from the request table: how fast queueing delay grows over the run.

    The slope (seconds of extra queueing per second of arrivals, least squares over measured,
    completed requests) is ~0 for a stable queue and 1 - capacity/load for an overloaded one.
    """
    req = requests[requests["measured"] & requests["finish_s"].notna()] if "measured" in requests else requests
    if len(req) < 10:
        return {"queue_growth_s_per_s": 0.0, "completed_frac": float(len(req) / max(len(requests), 1))}
    t = req["send_s"].to_numpy(float)
    q = req["queue_delay_s"].to_numpy(float)
    span = t.max() - t.min()
    slope = float(((t - t.mean()) * (q - q.mean())).sum() / (((t - t.mean()) ** 2).sum() or 1.0)) if span > 0 else 0.0
    measured = int(requests["measured"].sum()) if "measured" in requests else len(requests)
    return {"queue_growth_s_per_s": slope, "completed_frac": float(len(req) / max(measured, 1))}


Body = Callable[[dict[str, Any], str, bool], tuple[dict[str, Any], pd.DataFrame]]


def run_point(task: PointTask, body: Body = simulate) -> PointResult:
    """Run one point and make its results row.  A bad point becomes a row with status 'error'."""
    import time

    t0 = time.perf_counter()
    row: dict[str, Any] = {"point_id": task.point.id, "point_index": task.point.index}
    steps = None
    try:
        summary, steps_df = body(point_raw(task.base_raw, task.point.overrides, task.file), task.file,
                                 task.record_steps or task.keep_steps)
        row.update({k: _scalar(v) for k, v in summary.items()
                    if isinstance(_scalar(v), int | float | str | bool | type(None))})
        row["status"], row["error"] = "ok", ""
        steps = steps_df if task.keep_steps else None
    except ScenarioError as e:
        row["status"], row["error"] = "error", str(e)
    except Exception as e:  # noqa: BLE001 - a crashing point must not lose the rest of the sweep
        row["status"], row["error"] = "error", f"{type(e).__name__}: {e}"
    row.update(task.point.labels)       # axis labels win over the summary's echo of the same setting
    row["wall_s"] = time.perf_counter() - t0
    return PointResult(row, steps)
