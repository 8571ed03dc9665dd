"""Instructions each deployment feature's run executes, counted by valgrind (callgrind): a
deterministic companion to bench_features.py, whose wall seconds drift by tens of percent between
minutes on a shared VM.  Use it to tell whether a change made a run cheaper; the bar itself
(each feature within 20 % of the dense run's wall time) is still measured in seconds, and a run's
seconds per instruction differ between variants (a prefix-heavy run misses the cache more).

    python bench/bench_instructions.py [--requests N] [--only NAME ...]

Each variant of bench_features.py (the open-loop replay excepted) runs in a fresh interpreter
under `valgrind --tool=callgrind` twice, at N requests and at BASE_REQUESTS, and the difference
is reported: start-up (imports, the scenario, the workload's first rows) cancels out.
PYTHONHASHSEED and the BLAS threads are pinned (an idle OpenBLAS thread spinning after the
summary's dot product would otherwise be counted).  About 50x slower than a plain run: N = 10,000
takes a minute or two per variant on a 2-core VM.  Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_features import VARIANTS  # noqa: E402

BASE_REQUESTS = 200

CHILD = """
import sys
sys.path.insert(0, {root!r})
from sim.config import load_scenario
from sim.runner import run_scenario
run_scenario(load_scenario({path!r}, {overrides!r} + ["run.num_requests={n}"]))
"""


def instructions(path: Path, overrides: list[str], n: int) -> int:
    """Instructions callgrind counts for a fresh interpreter running the scenario at `n` requests."""
    code = CHILD.format(root=str(HERE.parent), path=str(path), overrides=overrides, n=n)
    env = dict(os.environ, PYTHONHASHSEED="0", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                              sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        raise RuntimeError((out.stderr.strip().splitlines() or ["valgrind failed"])[-1])
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10_000)
    names = [v for v, (_, o) in VARIANTS.items() if "<replay>" not in o]
    ap.add_argument("--only", nargs="*", choices=names, default=names)
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("bench_instructions: valgrind is not on PATH (apt install valgrind)", file=sys.stderr)
        return 2
    todo = ["dense"] + [v for v in args.only if v != "dense"]
    print(f"{'variant':<14}{'run instructions':>18}{'x dense':>9}   (at {args.requests} requests, "
          f"less a run of {BASE_REQUESTS})")
    dense = 0
    for name in todo:
        path, overrides = VARIANTS[name]
        try:
            run = instructions(path, overrides, args.requests) - instructions(path, overrides, BASE_REQUESTS)
        except RuntimeError as e:
            print(f"{name:<14} error: {e}")
            continue
        if name == "dense":
            dense = run
        print(f"{name:<14}{run:>18,}{run / dense if dense else float('nan'):>9.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
