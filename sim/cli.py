"""`pagesim` command line: run, validate, calibrate, sweep, plan, report.

Every bad input ends in one line on stderr (`pagesim: FILE: KEY: message`) and exit code 2;
no traceback is ever shown for user errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sim.errors import ScenarioError


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def print_summary(s: dict[str, Any], lines: list[str], wall_s: float) -> None:
    print("=" * 64)
    pp = s.get("pipeline_parallel_size") or 1
    par = f"TP{s.get('tensor_parallel_size')}" + (f" x PP{pp}" if pp > 1 else "")
    print(f" pagesim  {s.get('scenario')}: {s.get('model')} on {s.get('num_replicas')}x {par} {s.get('gpu')}")
    print("=" * 64)
    for line in lines:
        print(f"  {line}")
    print("-" * 64)
    rows = [
        ("Completed requests", "completed"), ("Benchmark duration (s)", "duration"),
        ("Request throughput (req/s)", "request_throughput"), ("Output token throughput (tok/s)", "output_throughput"),
        ("Total token throughput (tok/s)", "total_token_throughput"), ("Request goodput (req/s)", "request_goodput"),
        ("Mean TTFT (ms)", "mean_ttft_ms"), ("Median TTFT (ms)", "median_ttft_ms"), ("P99 TTFT (ms)", "p99_ttft_ms"),
        ("Mean TPOT (ms)", "mean_tpot_ms"), ("Median TPOT (ms)", "median_tpot_ms"), ("P99 TPOT (ms)", "p99_tpot_ms"),
        ("Mean ITL (ms)", "mean_itl_ms"), ("P99 ITL (ms)", "p99_itl_ms"),
        ("Mean E2EL (ms)", "mean_e2el_ms"), ("P99 E2EL (ms)", "p99_e2el_ms"),
        ("Mean queue delay (ms)", "mean_queue_delay_ms"), ("Preemptions", "num_preemptions"),
        ("KV cache usage, mean", "kv_cache_usage_mean"), ("Prefix cache hit rate", "prefix_cache_hit_rate"),
        ("KV internal fragmentation", "kv_internal_frag_frac"), ("KV cached-free", "kv_cached_free_frac"),
        ("Spec decode mean acceptance length", "spec_decode_mean_acceptance_length"),
        ("Spec decode draft acceptance rate", "spec_decode_acceptance_rate"),
        ("Engine steps", "num_steps"), ("Cost (USD/h)", "price_per_hour_usd"),
        ("USD per 1M output tokens", "usd_per_million_output_tokens"),
    ]
    for label, key in rows:
        if s.get(key) is not None:
            print(f"  {label:<36}{_fmt(s[key]):>24}")
    print(f"  {'Simulator wall time (s)':<36}{wall_s:>24.2f}")
    print("=" * 64)


def cmd_run(args: argparse.Namespace) -> int:
    from sim.config import load_scenario
    from sim.results import write_results
    from sim.runner import run_scenario

    sc = load_scenario(args.scenario, args.set or [])
    out = Path(args.out) if args.out else Path("results") / sc.name
    t0 = time.perf_counter()
    res = run_scenario(sc)
    wall = time.perf_counter() - t0
    res.summary["wall_time_s"] = wall
    write_results(out, res.summary, res.requests, res.steps, sc.raw,
                  {"derived": res.deployment.describe()})
    print_summary(res.summary, res.deployment.describe(), wall)
    print(f"results: {out}/")
    if not args.no_report:
        try:
            from reports.build import build_report
        except ImportError:
            return 0
        path = build_report(out)
        print(f"report:  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pagesim", description="Capacity planner for PagedAttention LLM serving (vLLM).")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="simulate one scenario and write a results folder")
    r.add_argument("scenario", help="scenario YAML file")
    r.add_argument("--out", help="results folder (default results/<scenario name>)")
    r.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a scenario value (repeatable)")
    r.add_argument("--no-report", action="store_true", help="do not write report.html")
    r.set_defaults(func=cmd_run)
    for name, mod in (("validate", "sim.validate.cli"), ("calibrate", "calibrate.cli"),
                      ("sweep", "sim.sweep_cli"), ("plan", "sim.plan_cli"), ("report", "reports.cli")):
        q = sub.add_parser(name, help=f"see `pagesim {name} --help`", add_help=False)
        q.add_argument("rest", nargs=argparse.REMAINDER)
        q.set_defaults(func=None, module=mod)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.func is None:
            import importlib
            try:
                mod = importlib.import_module(args.module)
            except ModuleNotFoundError as e:
                print(f"pagesim: `{args.command}` is not available in this install ({e.name} missing)", file=sys.stderr)
                return 2
            return int(mod.main(args.rest))
        return int(args.func(args))
    except ScenarioError as e:
        print(f"pagesim: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pagesim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
