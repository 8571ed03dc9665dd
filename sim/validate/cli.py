"""`pagesim validate SCENARIO.yaml [...] --engine vllm-scheduler | vllm [--out DIR]`.

``--engine vllm-scheduler`` runs each scenario's workload through vLLM 0.32's own v1 scheduler (no
model: mocked outputs, a step clock) and through pagesim's, compares every step, writes both
traces, the side-by-side table and a summary to DIR, and exits 1 when any step differs.

``--engine vllm`` runs the real engine (a tiny model with dummy weights on the CPU build) on a wall
clock, fits a cost profile to its step times, runs pagesim's simulator on the same requests with
that profile and compares schedule and latencies (`real_engine.py`); ``--from-trace FILE`` reads an
engine trace or a `vllm bench serve --save-detailed` JSON instead of running the engine.  Exits 1
when a deterministic scenario's schedule differs or a figure misses its tolerance.

Exit 0 when all agree, 2 on bad input or a missing vLLM.  Settings vLLM does not have are refused
in one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sim.errors import ScenarioError

DEFAULT_STEP_S = 0.05


def scheduler_job(sc: Any, step_s: float) -> dict[str, Any]:
    """The driver job for a scenario: the engine settings, pagesim's block count, its requests."""
    return build_job(sc, step_s)[0]


def build_job(sc: Any, step_s: float) -> tuple[dict[str, Any], Any]:
    """(driver job, the `RequestTable` it was made from); settings vLLM lacks are refused."""
    from sim.deployment import build_deployment
    from sim.runner import check_fits, fit_lengths, make_workload
    from sim.validate.vllm_env import job_from_table

    eng = sc.engine
    if eng.scheduler != "vllm-v1":
        raise ScenarioError(sc.path, "engine.scheduler", "vLLM's v1 scheduler has no v0 policy; use vllm-v1", eng.scheduler, True)
    if eng.allocator != "paged":
        raise ScenarioError(sc.path, "engine.allocator", "vLLM allocates paged blocks only", eng.allocator, True)
    if eng.preemption_mode == "swap":
        raise ScenarioError(sc.path, "engine.preemption_mode", "vLLM v1 preempts by recompute only", "swap", True)
    if eng.num_replicas != 1:
        raise ScenarioError(sc.path, "engine.num_replicas", "conformance compares one engine", eng.num_replicas, True)
    dep = build_deployment(sc)
    table, _ = fit_lengths(sc, dep, make_workload(sc))
    check_fits(sc, dep, table)
    lim = dep.limits
    config = {"block_size": eng.block_size, "num_gpu_blocks_override": int(dep.capacity.num_gpu_blocks),
              "enable_prefix_caching": eng.enable_prefix_caching, "max_num_seqs": lim.max_num_seqs,
              "max_num_batched_tokens": lim.max_num_batched_tokens, "enable_chunked_prefill": lim.enable_chunked_prefill,
              "long_prefill_token_threshold": lim.long_prefill_token_threshold, "max_model_len": lim.max_model_len,
              "async_scheduling": lim.async_scheduling, "watermark": float(eng.watermark or 0.0),
              "scheduler_reserve_full_isl": lim.scheduler_reserve_full_isl, "policy": lim.scheduling_policy}
    return job_from_table(table, config, step_s), table


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pagesim validate", description=__doc__.splitlines()[0])
    p.add_argument("scenarios", nargs="+", help="scenario YAML files")
    p.add_argument("--engine", choices=["vllm-scheduler", "vllm"], default="vllm-scheduler",
                   help="vllm-scheduler: vLLM's own scheduler and KV-cache manager on a step clock; "
                        "vllm: the real engine on a wall clock, with a cost profile fitted to it")
    p.add_argument("--from-trace", type=Path, metavar="FILE",
                   help="--engine vllm: compare against this engine trace or vllm bench JSON instead of running vLLM")
    p.add_argument("--profile", type=Path, metavar="PATH",
                   help="--engine vllm: price pagesim's steps with this profile instead of fitting one")
    p.add_argument("--out", default="results/validate", help="output folder (one subfolder per scenario)")
    p.add_argument("--step-s", type=float, default=DEFAULT_STEP_S, help="seconds per step on both sides")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = p.parse_args(argv)
    from sim.config import load_scenario
    from sim.validate.compare import compare_traces
    from sim.validate.pagesim_trace import run_job
    from sim.validate.step_trace import write_trace
    from sim.validate.vllm_env import VllmUnavailable, find_vllm, run_vllm_schedulers

    scenarios = [load_scenario(path, args.set) for path in args.scenarios]
    if args.engine == "vllm":
        return main_engine(scenarios, Path(args.out), args.from_trace, args.profile)
    jobs = [scheduler_job(sc, args.step_s) for sc in scenarios]       # every input checked before any run
    try:
        env = find_vllm()
    except VllmUnavailable as e:
        print(f"pagesim: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    t0 = time.perf_counter()
    vllm_traces = run_vllm_schedulers(jobs)
    vllm_s = time.perf_counter() - t0
    worst = 0
    for sc, job, vtrace in zip(scenarios, jobs, vllm_traces, strict=True):
        t1 = time.perf_counter()
        header, ptrace = run_job(job)
        pagesim_s = time.perf_counter() - t1
        cmp = compare_traces(vtrace, ptrace)
        d = out / sc.name
        d.mkdir(parents=True, exist_ok=True)
        from sim.validate.step_trace import TraceHeader
        write_trace(d / "vllm_trace.jsonl", TraceHeader(source="vllm", vllm_version=env.version, step_s=args.step_s,
                                                         config=job["config"]), vtrace)
        write_trace(d / "pagesim_trace.jsonl", header, ptrace)
        cmp.table.to_csv(d / "side_by_side.csv", index=False)
        summary = {"scenario": sc.name, "vllm_version": env.version, "engine": "vllm-scheduler",
                   "num_requests": len(job["requests"]), "step_s": args.step_s, "config": job["config"],
                   "pagesim_wall_s": round(pagesim_s, 3), **cmp.summary}
        (d / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        s = cmp.summary
        side = s.get("pagesim", {})
        print(f"{sc.name}: {s['pct_identical']:.2f}% of {s['steps_compared']} steps identical "
              f"(vLLM {env.version}); preemptions {side.get('preemptions')}, prefix-hit tokens "
              f"{side.get('prefix_hit_tokens')}; pagesim {pagesim_s:.2f} s")
        if cmp.first_divergence is not None:
            print(cmp.report)
            worst = 1
    print(f"vLLM scheduler runs: {vllm_s:.1f} s; results in {out}/")
    return worst


def main_engine(scenarios: list[Any], out: Path, from_trace: Path | None, profile: Path | None) -> int:
    """``--engine vllm``: run (or read) the real engine's trace per scenario, then fit, simulate, compare."""
    import shutil
    import tempfile

    from sim.validate.real_engine import engine_job, validate_scenario
    from sim.validate.vllm_env import VllmUnavailable, run_vllm_engines

    if from_trace is not None and len(scenarios) != 1:
        raise ScenarioError(str(from_trace), "", "--from-trace compares one scenario; give exactly one")
    traces: list[Path | None] = [None] * len(scenarios)
    if from_trace is None:
        jobs = [engine_job(sc)[0] for sc in scenarios]          # every input checked before any run
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="pagesim-engine-") as tmp:
                for i, path in enumerate(run_vllm_engines(jobs, tmp)):
                    (out / scenarios[i].name).mkdir(parents=True, exist_ok=True)
                    traces[i] = Path(shutil.copyfile(path, out / scenarios[i].name / "engine_trace.jsonl"))
        except VllmUnavailable as e:
            print(f"pagesim: {e}", file=sys.stderr)
            return 2
        print(f"vLLM engine runs: {time.perf_counter() - t0:.1f} s")
    worst = 0
    for sc, trace in zip(scenarios, traces, strict=True):
        summary, table = validate_scenario(sc, out / sc.name, from_trace, profile, trace)
        fit = summary.get("fit") or {}
        fit_line = (f"; fit R² {fit['r2_held_out']:.3f} held out, median step error {100 * fit['median_rel_err']:.1f}%"
                    if fit else "")
        print(f"{sc.name}: {'PASS' if summary['passed'] else 'FAIL'} ({summary['source']}{fit_line})")
        print(table)
        for f in summary["failures"]:
            print(f"  miss: {f}")
        worst = max(worst, 0 if summary["passed"] else 1)
    print(f"results in {out}/")
    return worst
