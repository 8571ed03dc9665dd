"""What each deployment feature adds to the wall time of a 100k-request run.

    python bench/bench_features.py [--requests N] [--only NAME ...] [--repeat K]

Runs bench/azure_conv_100k.yaml (100,000 Azure-conv requests at 18 req/s, Llama-3-8B on one H100)
as it is ("dense") and with one feature switched on at a time, each in a fresh subprocess (so peak
memory is per run), and prints wall seconds, peak RSS, engine steps and the ratio to the dense run.
The issue's bar: every feature within 20 % of the dense figure.  Variants:

* moe:       Mixtral-8x7B on 2 x H100 (TP2), the same traffic (the MoE maths lives in the
             linear-layer table, so only the simulated dynamics differ);
* spec:      EAGLE, k = 3, acceptance 0.7 (synchronous scheduling, as pagesim simulates it);
* pp2:       pipeline_parallel_size 2 (sync batch queue of two batches);
* offload:   a CPU KV tier (the vLLM offloading connector's CPU cache);
* sessions:  bench/sessions_100k.yaml: 100,000 turns of multi-turn chat of a like size;
* sessions-open: the same 100,000 turns replayed open-loop at the times the closed loop sent
             them (a table made by an untimed sessions run first): the same results (same turns,
             same prefix hits; tests/test_sessions.py checks the identity), so the wall time
             left between it and `sessions` is what the closed loop costs, and between it and
             `dense` what this traffic's prefix-cache work costs.

Host speed drifts on shared VMs: compare ratios from one invocation, not absolute seconds; with
`--repeat K` each round runs dense then the variants and the median of the within-round ratios is
printed, of wall seconds (the bar) and of the child's CPU seconds (user + system: a run is one
thread, so on a quiet host the two agree; on a busy one CPU time leaves out the time the process
waited for a core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DENSE = HERE / "azure_conv_100k.yaml"
VARIANTS: dict[str, tuple[Path, list[str]]] = {
    "dense": (DENSE, []),
    "moe": (DENSE, ["model=mixtral-8x7b", "hardware.gpu=H100-SXM", "engine.tensor_parallel_size=2"]),
    "spec": (DENSE, ["engine.speculative_config.method=eagle", "engine.speculative_config.num_speculative_tokens=3",
                     "engine.speculative_config.acceptance_rate=0.7"]),
    "pp2": (DENSE, ["engine.pipeline_parallel_size=2"]),
    "offload": (DENSE, ["engine.kv_offloading_size=64"]),
    "sessions": (HERE / "sessions_100k.yaml", []),
    "sessions-open": (HERE / "sessions_100k.yaml", ["<replay>"]),
}

CHILD = """
import json, pickle, resource, sys, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from sim.config import load_scenario
from sim.runner import run_scenario
sc = load_scenario({path!r}, {overrides!r} + ["run.num_requests={n}"])
table = pickle.load(open({replay!r}, "rb")) if {replay!r} else None
s = run_scenario(sc, table=table).summary
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall_s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "steps": s["num_steps"], "completed": s["completed"],
                  "mean_tpot_ms": s["mean_tpot_ms"], "p99_ttft_ms": s["p99_ttft_ms"]}}))
"""


REPLAY = """
import pickle, sys
sys.path.insert(0, {root!r})
import numpy as np
from sim.config import load_scenario
from sim.requests_table import RequestTable
from sim.runner import run_scenario
r = run_scenario(load_scenario({path!r}, {overrides!r} + ["run.num_requests={n}"]))
t, send = r.workload, r.requests["send_s"].to_numpy()
order = np.argsort(send, kind="stable")
pickle.dump(RequestTable(send[order], t.prompt_tokens[order], t.output_tokens[order],
                         segments=[t.segments[i] for i in order], source="sessions replayed open-loop"),
            open({out!r}, "wb"))
"""


def run_one(path: Path, overrides: list[str], n: int) -> dict[str, float]:
    replay = ""
    if "<replay>" in overrides:         # the closed loop's sends as an open-loop table, made untimed
        overrides = [o for o in overrides if o != "<replay>"]
        replay = str(Path(tempfile.gettempdir()) / f"pagesim-bench-replay-{os.getpid()}.pkl")
        code = REPLAY.format(root=str(HERE.parent), path=str(path), overrides=overrides, n=n, out=replay)
        made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if made.returncode != 0:
            return {"error": (made.stderr.strip().splitlines() or ["failed"])[-1]}  # type: ignore[dict-item]
    code = CHILD.format(root=str(HERE.parent), path=str(path), overrides=overrides, n=n, replay=replay)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if replay:
        os.remove(replay)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}  # type: ignore[dict-item]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of dense-then-variants; ratios are taken within a round, the median reported")
    args = ap.parse_args()
    names = ["dense"] + [v for v in args.only if v != "dense"]
    ratios: dict[str, list[float]] = {n: [] for n in names}
    cpu_ratios: dict[str, list[float]] = {n: [] for n in names}
    print(f"{'variant':<14}{'wall_s':>9}{'x dense':>9}{'cpu_s':>8}{'x dense':>9}{'rss_MB':>8}{'steps':>10}"
          f"{'mean_tpot_ms':>14}{'p99_ttft_ms':>13}")
    t0 = time.perf_counter()
    for rnd in range(args.repeat):
        if args.repeat > 1:
            print(f"round {rnd + 1}")
        results: dict[str, dict[str, float]] = {}
        for name in names:
            path, overrides = VARIANTS[name]
            r = results[name] = run_one(path, overrides, args.requests)
            if "error" in r:
                print(f"{name:<14} error: {r['error']}")
                continue
            dense = results.get("dense", {})
            ratio = r["wall_s"] / dense["wall_s"] if "wall_s" in dense else float("nan")
            cpu_ratio = r["cpu_s"] / dense["cpu_s"] if "cpu_s" in dense else float("nan")
            ratios[name].append(ratio)
            cpu_ratios[name].append(cpu_ratio)
            print(f"{name:<14}{r['wall_s']:>9.1f}{ratio:>9.2f}{r['cpu_s']:>8.1f}{cpu_ratio:>9.2f}"
                  f"{r['peak_rss_mb']:>8.0f}{r['steps']:>10}"
                  f"{r['mean_tpot_ms']:>14.1f}{r['p99_ttft_ms']:>13.0f}", flush=True)
    if args.repeat > 1:      # the host's speed drifts between rounds: within-round ratios, their median
        for what, rs in (("wall", ratios), ("cpu", cpu_ratios)):
            print(f"median x dense over rounds ({what}): " + ", ".join(
                f"{n} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for n, v in rs.items() if v and n != "dense"))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
