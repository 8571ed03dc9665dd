"""`pagesim sweep SCENARIO`: run a grid of scenario variants in parallel, resumably.

    pagesim sweep scenarios/sweeps/block-size.yaml --out results/bs --jobs 2
    pagesim sweep scenarios/small.yaml --axis block_size=8,16,32 --axis rate=4,8,16 --seeds 3
    RAY_ADDRESS=ray://head:10001 pagesim sweep ... --executor ray

Axes come from the scenario's `sweep:` section, then `--axis NAME=V1,V2,...` flags (which replace
an axis of the same name).  Finished points stream to OUT/points/ as they complete; running the
same command again skips them.  A progress bar shows points done, rate and ETA.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sim.config import apply_override, parse_yaml
from sim.errors import ScenarioError
from sim.sweep import (
    LOAD_AXES,
    SEED_AXIS,
    Axis,
    Body,
    Point,
    PointTask,
    expand,
    parse_axes,
    run_point,
    simulate,
    validate_points,
)
from sim.sweep_exec import EXECUTORS, imap_unordered
from sim.sweep_store import SweepStore


@dataclass
class SweepOutcome:
    """What a sweep did: the consolidated table and counts (for the caller's message and tests)."""

    table: pd.DataFrame
    num_points: int
    num_run: int
    num_skipped: int
    wall_s: float
    interrupted: bool = False


def showcase_point(points: list[Point], axes: list[Axis]) -> Point | None:
    """The point whose step table the report plots: first value of every axis, highest load."""
    if not points:
        return None
    want = {a.name: a.values[0] for a in axes}
    for a in axes:
        if a.name in LOAD_AXES and all(isinstance(v, int | float) for v in a.values):
            want[a.name] = max(a.values)
    return next((p for p in points if p.labels == want), points[0])


def run_sweep(base_raw: dict[str, Any], file: str, axes: list[Axis], out: Path, *, executor: str = "local",
              jobs: int | None = None, fresh: bool = False, steps: str = "showcase", record_steps: bool = True,
              progress: bool = True, body: Body = simulate,
              on_point: Callable[[int], None] | None = None) -> SweepOutcome:
    """Run every point of the grid not already stored in `out`; return the consolidated table.

    `steps`: which points keep their step table (none | showcase | all).  `record_steps`: simulate
    with the step recorder on (needed for the kv_* summary metrics).  `on_point` is called with the
    number of points finished in this call (tests use it to simulate an interruption).
    """
    from tqdm import tqdm

    points = expand(axes)
    show = showcase_point(points, axes)
    keep = {p.id for p in points} if steps == "all" else ({show.id} if show and steps == "showcase" else set())
    store = SweepStore(out)
    done = store.open(base_raw, axes, len(points), keep, file, fresh=fresh)
    todo = [p for p in points if p.id not in done]
    abs_file = str(Path(file).resolve()) if Path(file).exists() else file
    tasks = ((p.id, PointTask(p, base_raw, abs_file, keep_steps=p.id in keep, record_steps=record_steps))
             for p in todo)
    t0 = time.perf_counter()
    num_run = 0
    interrupted = False
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="pt", desc="sweep",
               disable=not progress, dynamic_ncols=True, smoothing=0.1, file=sys.stderr)
    results = imap_unordered(partial(run_point, body=body), tasks, executor, jobs)
    try:
        for _, result in results:
            store.add(result)
            num_run += 1
            bar.update(1)
            if on_point is not None:
                on_point(num_run)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        results.close()
        bar.close()
    table = store.consolidate([p.id for p in points])
    if interrupted:
        raise SweepInterrupted(SweepOutcome(table, len(points), num_run, len(points) - len(todo),
                                            time.perf_counter() - t0, True))
    return SweepOutcome(table, len(points), num_run, len(points) - len(todo), time.perf_counter() - t0)


class SweepInterrupted(KeyboardInterrupt):
    """Raised after an interrupted sweep has saved what finished; carries the partial outcome."""

    def __init__(self, outcome: SweepOutcome):
        super().__init__("sweep interrupted")
        self.outcome = outcome


def parse_axis_flags(flags: list[str]) -> dict[str, Any]:
    """`--axis NAME=V1,V2` -> {NAME: [V1, V2]} with each value parsed as YAML."""
    section: dict[str, Any] = {}
    for flag in flags:
        if "=" not in flag:
            raise ScenarioError("--axis", flag, "expected NAME=V1,V2,...")
        name, text = flag.split("=", 1)
        try:
            values = yaml.safe_load(f"[{text}]")
        except yaml.YAMLError:
            raise ScenarioError("--axis", name, "cannot parse the values", text, True) from None
        section[name.strip()] = values
    return section


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagesim sweep", description="Run a grid of scenario variants (resumable).")
    p.add_argument("scenario", help="base scenario YAML (its sweep: section names the axes)")
    p.add_argument("--axis", action="append", default=[], metavar="NAME=V1,V2",
                   help="add or replace an axis, e.g. block_size=8,16,32 or engine.watermark=0,0.01")
    p.add_argument("--seeds", type=int, help="replicate every point over this many seeds (base seed + 0..N-1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override the base scenario")
    p.add_argument("--out", help="results folder (default results/<name>-sweep)")
    p.add_argument("--jobs", "-j", type=int, help="worker processes (default: the usable cores)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: process pool; ray: Ray cluster from RAY_ADDRESS (or a local Ray); serial")
    p.add_argument("--steps", choices=("none", "showcase", "all"), default="showcase",
                   help="which points keep their per-step table for the report (default: one)")
    p.add_argument("--fast", action="store_true",
                   help="simulate without the step recorder (faster; no kv_* fragmentation metrics)")
    p.add_argument("--fresh", action="store_true", help="discard stored points and start over")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    file = args.scenario
    raw = parse_yaml(Path(file))
    for assignment in args.set:
        apply_override(raw, assignment, file)
    section = raw.get("sweep") if raw.get("sweep") is not None else {}
    if isinstance(section, dict):
        section = dict(section)
        section.update(parse_axis_flags(args.axis))
        if args.seeds is not None:
            section.pop("seeds", None)
            section[SEED_AXIS] = args.seeds
    axes = parse_axes(section, file, raw)
    if not axes:
        raise ScenarioError(file, "sweep", "no axes: add a sweep: section or --axis NAME=V1,V2")
    validate_points(raw, axes, file)
    out = Path(args.out) if args.out else Path("results") / f"{raw.get('name') or Path(file).stem}-sweep"
    try:
        res = run_sweep(raw, file, axes, out, executor=args.executor, jobs=args.jobs, fresh=args.fresh,
                        steps=args.steps, record_steps=not args.fast, progress=not args.quiet)
    except SweepInterrupted as e:
        o = e.outcome
        print(f"pagesim: sweep interrupted after {o.num_skipped + o.num_run}/{o.num_points} points; "
              f"run the same command again to resume ({out}/)", file=sys.stderr)
        return 130
    errors = res.table[res.table["status"] != "ok"] if "status" in res.table else res.table.iloc[:0]
    print(f"sweep: {res.num_points} points ({res.num_run} run, {res.num_skipped} already done) "
          f"in {res.wall_s:.1f} s; {len(errors)} failed")
    for msg in errors["error"].drop_duplicates().head(3) if len(errors) else []:
        print(f"  failed point: {msg}")
    print(f"results: {out}/sweep.parquet")
    if not args.no_report:
        from reports.build import build_report
        print(f"report:  {build_report(out)}")
    return 0
