"""`pagesim plan SCENARIO`: find, rank and recommend deployments that meet the SLOs at a target load.

    pagesim plan scenarios/sweeps/plan-llama3-8b.yaml --target-rate 40 --out results/plan

Each candidate (a grid over `plan.candidates`) is searched in its own worker (`sim.sweep_exec`);
the folder gets plan.json (recommendation, warnings, sensitivity), candidates.parquet (one row per
candidate, ranked), evaluations.parquet (every load tried: the throughput-latency curves), and
recommended/ (a full results folder of the recommended deployment at its operating load).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sim.config import apply_override, parse_yaml
from sim.planner import (
    PlanSpec,
    Probe,
    check_slo,
    find_cliff,
    find_sustainable,
    parse_plan,
    rank,
    replicas_needed,
    sensitivity,
)
from sim.results import _clean, atomic_write_parquet, atomic_write_text, write_results
from sim.sweep import AXES, Body, Point, expand, point_raw, simulate, validate_points
from sim.sweep_cli import parse_axis_flags
from sim.sweep_exec import EXECUTORS, imap_unordered

RATE_PATH, SEED_PATH = AXES["rate"][0], AXES["seed"][0]


@dataclass(frozen=True, slots=True)
class CandidateTask:
    """One candidate's search, picklable for worker processes and Ray."""

    point: Point
    base_raw: dict[str, Any]
    file: str
    spec: PlanSpec


def evaluate(task: CandidateTask, rate: float, body: Body) -> Probe:
    """Run the candidate at `rate` for every seed: passes only if every seed passes; mean metrics."""
    runs, reasons = [], []
    for seed in task.spec.seeds:
        overrides = task.point.overrides | {RATE_PATH: rate, SEED_PATH: seed}
        summary, _ = body(point_raw(task.base_raw, overrides, task.file), task.file, False)
        runs.append(summary)
        reasons += [r for r in check_slo(summary, task.spec) if r not in reasons]
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    metrics: dict[str, Any] = {k: float(np.mean([r.get(k) or 0.0 for r in runs])) for k in keys}
    metrics.update({k: v for k, v in runs[0].items() if isinstance(v, str)})
    return Probe(rate, not reasons, reasons, metrics)


def search_candidate(task: CandidateTask, body: Body = simulate) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Search one candidate; returns its row and one row per load tried."""
    from sim.errors import ScenarioError

    spec, labels = task.spec, task.point.labels
    row: dict[str, Any] = dict(labels) | {"candidate_id": task.point.id, "error": ""}
    try:
        found = find_sustainable(lambda r: evaluate(task, r, body), spec)
        probes = list(found.probes)
        if found.sustainable_rps > 0:
            for f in spec.cliff_probes:
                r = f * found.sustainable_rps
                if all(abs(p.rate_rps / r - 1) > 0.02 for p in probes):
                    probes.append(evaluate(task, r, body))
    except ScenarioError as e:
        return row | {"error": str(e), "replicas": None}, []
    cliff = find_cliff(probes, spec.cliff_min_preemptions)
    capacity = found.sustainable_rps
    if cliff is not None and cliff[1] <= capacity:
        capacity = cliff[0]        # the cascade starts inside the SLO region: stay below it
    at = max((p for p in probes if p.ok and p.rate_rps <= capacity), key=lambda p: p.rate_rps, default=None)
    nxt = min((p for p in found.probes if not p.ok and p.rate_rps > found.sustainable_rps),
              key=lambda p: p.rate_rps, default=None)
    m = at.metrics if at else (probes[0].metrics if probes else {})
    units = replicas_needed(spec.target_rate, capacity, spec.margin)
    price = m.get("price_per_hour_usd")
    out_per_req = m["total_output_tokens"] / m["completed"] if m.get("completed") else math.nan
    hourly = units * price if units is not None and price is not None else None
    row.update({
        "gpu": m.get("gpu"), "sustainable_rps": found.sustainable_rps, "capped": found.capped,
        "cliff_safe_rps": cliff[0] if cliff else None, "cliff_rps": cliff[1] if cliff else None,
        "capacity_rps": capacity, "replicas": units, "price_per_hour_usd": price, "hourly_cost_usd": hourly,
        "gpus_total": (units * m.get("tensor_parallel_size", 1) * (m.get("pipeline_parallel_size") or 1)
                       * m.get("num_replicas", 1)) if units else None,
        "operating_rps_per_replica": spec.target_rate / units if units else None,
        "usd_per_million_output_tokens": hourly / (spec.target_rate * out_per_req * 3600) * 1e6 if hourly else None,
        "limit_reason": "; ".join(nxt.reasons) if nxt else ("search upper bound reached" if found.capped else ""),
        **{k: m.get(k) for k in ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms", "slo_attainment",
                                 "num_gpu_blocks")},
    })
    row.update(labels)            # the candidate's own settings win over metrics of the same name
    rows = [p.metrics | dict(labels) | {"candidate_id": task.point.id, "rate_rps": p.rate_rps, "ok": p.ok,
                                        "reasons": "; ".join(p.reasons)} for p in sorted(probes, key=lambda p: p.rate_rps)]
    return row, rows


def cliff_warning(r: dict[str, Any], names: list[str]) -> str:
    """Where a candidate's preemption cascade starts, and whether it or the SLOs set its capacity."""
    cfg = ", ".join(f"{n}={r[n]}" for n in names) or "base"
    where = (f"KV-cache exhaustion starts a preemption cascade at {r['cliff_rps']:.2f} req/s per replica "
             f"(preemptions and latency rising together)")
    if r["cliff_rps"] <= r["sustainable_rps"]:
        return f"{cfg}: {where}, inside the SLO region; capacity held at {r['capacity_rps']:.2f} req/s, below the cliff."
    return (f"{cfg}: {where}, {r['cliff_rps'] / r['capacity_rps'] - 1:.0%} above its sustainable "
            f"{r['capacity_rps']:.2f} req/s.")


def describe(best: dict[str, Any] | None, spec: PlanSpec, names: list[str]) -> str:
    """The recommendation in plain words."""
    if best is None or best.get("replicas") is None:
        return f"No candidate meets the SLOs at any load from {spec.low_rps:g} req/s; relax the SLOs or add candidates."
    cfg = ", ".join(f"{n}={best[n]}" for n in names) or "the base configuration"
    headroom = (best["capacity_rps"] / best["operating_rps_per_replica"] - 1) * 100
    return (f"Run {best['replicas']} replica(s) of {cfg} on {best.get('gpu')} for {spec.target_rate:g} req/s: "
            f"${best['hourly_cost_usd']:.2f}/h, ${best['usd_per_million_output_tokens']:.3f} per million output tokens. "
            f"Each replica carries {best['operating_rps_per_replica']:.2f} req/s of the {best['capacity_rps']:.2f} req/s "
            f"it sustains within the SLOs ({headroom:.0f}% headroom; margin {spec.margin:g}).")


def run_plan(raw: dict[str, Any], file: str, spec: PlanSpec, out: Path, *, executor: str = "local",
             jobs: int | None = None, progress: bool = True, body: Body = simulate) -> dict[str, Any]:
    """Search every candidate, rank, recommend; write the plan folder; return plan.json's content."""
    from tqdm import tqdm

    points = expand(list(spec.candidates)) if spec.candidates else [Point(0, "base", {}, {})]
    abs_file = str(Path(file).resolve()) if Path(file).exists() else file
    tasks = ((p.id, CandidateTask(p, raw, abs_file, spec)) for p in points)
    rows, probes = [], []
    with tqdm(total=len(points), unit="cand", desc="plan", disable=not progress, file=sys.stderr) as bar:
        for _, (row, probe_rows) in imap_unordered(partial(search_candidate, body=body), tasks, executor, jobs):
            rows.append(row)
            probes += probe_rows
            bar.update(1)
    names = [a.name for a in spec.candidates]
    ranked = rank(rows)
    best = ranked[0] if ranked and ranked[0].get("replicas") is not None else None
    warnings = [cliff_warning(r, names) for r in ranked if r.get("cliff_rps") is not None]
    plan = {"kind": "plan", "scenario": file, "target_rate": spec.target_rate, "margin": spec.margin,
            "slo_ms": spec.slo_ms, "percentile": spec.percentile, "goodput": spec.goodput,
            "axes": [{"name": a.name, "path": a.path, "values": list(a.values)} for a in spec.candidates],
            "recommendation": best, "recommendation_text": describe(best, spec, names), "warnings": warnings,
            "sensitivity": sensitivity(ranked, best, list(spec.candidates)) if best else []}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_parquet(out / "candidates.parquet", pd.DataFrame(ranked))
    atomic_write_parquet(out / "evaluations.parquet", pd.DataFrame(probes))
    atomic_write_text(out / "scenario.yaml", yaml.safe_dump(raw, sort_keys=False))
    if best is not None:
        overrides = next(p for p in points if p.id == best["candidate_id"]).overrides
        rec_raw = point_raw(raw, overrides | {RATE_PATH: best["operating_rps_per_replica"]}, abs_file)
        summary, steps = body(rec_raw, abs_file, True)
        write_results(out / "recommended", summary, pd.DataFrame(), steps, rec_raw)
    atomic_write_text(out / "plan.json", json.dumps(_clean(plan), indent=2, default=str) + "\n")
    return plan


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pagesim plan", description="Recommend the cheapest deployment that meets the SLOs.")
    p.add_argument("scenario", help="scenario YAML with slo: targets and a plan: section")
    p.add_argument("--target-rate", type=float, help="requests/s to serve (overrides plan.target_rate)")
    p.add_argument("--margin", type=float, help="headroom factor >= 1 (overrides plan.margin)")
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=V1,V2", help="add a candidate axis")
    p.add_argument("--seeds", type=int, help="seeds per load (every seed must pass)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override the scenario")
    p.add_argument("--out", help="plan folder (default results/<name>-plan)")
    p.add_argument("--jobs", "-j", type=int, help="worker processes (default: the usable cores)")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    args = p.parse_args(argv)
    raw = parse_yaml(Path(args.scenario))
    for assignment in args.set:
        apply_override(raw, assignment, args.scenario)
    plan = raw.setdefault("plan", {}) if isinstance(raw.get("plan"), dict | None) else raw["plan"]
    if isinstance(plan, dict):
        if args.margin is not None:
            plan["margin"] = args.margin
        if args.seeds is not None:
            plan["seeds"] = args.seeds
        if args.candidate:
            plan["candidates"] = dict(plan.get("candidates") or {}) | parse_axis_flags(args.candidate)
    spec = parse_plan(raw, args.scenario, args.target_rate)
    validate_points(raw, list(spec.candidates), args.scenario, where="plan.candidates")
    out = Path(args.out) if args.out else Path("results") / f"{raw.get('name') or Path(args.scenario).stem}-plan"
    result = run_plan(raw, args.scenario, spec, out, executor=args.executor, jobs=args.jobs, progress=not args.quiet)
    table = pd.read_parquet(out / "candidates.parquet")
    cols = [c for c in [*(a.name for a in spec.candidates), "capacity_rps", "replicas", "hourly_cost_usd",
                        "usd_per_million_output_tokens", "limit_reason"] if c in table]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(table[cols].head(10).to_string(index=False))
    print(f"\n{result['recommendation_text']}")
    for w in result["warnings"]:
        print(f"warning: {w}")
    for s in result["sensitivity"][:5]:
        print(f"  {s['axis']} {s['from']} -> {s['to']}: capacity {s['delta_capacity_pct']:+.0f}%")
    print(f"plan: {out}/plan.json")
    if not args.no_report:
        from reports.build import build_report
        print(f"report: {build_report(out)}")
    return 0
