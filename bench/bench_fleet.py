"""Wall time and peak memory of the fleet benchmark (bench/fleet_1h_16x.yaml): 360,000 requests,
16 replicas.  `python bench/bench_fleet.py [--requests N] [--router round-robin] [--profile]`."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from sim.config import load_scenario  # noqa: E402
from sim.runner import run_scenario  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=None, help="fewer requests than the hour's 360,000")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--router", default=None, help="engine.router (the scenario's: least-outstanding-tokens)")
    args = ap.parse_args()
    sets = [f"run.num_requests={args.requests}"] if args.requests else []
    if args.router:
        sets.append(f"engine.router={args.router}")
    t0 = time.perf_counter()
    sc = load_scenario(HERE / "fleet_1h_16x.yaml", sets)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    s = run_scenario(sc).summary
    if prof:
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
        (HERE / "profile_fleet.txt").write_text(buf.getvalue())
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall_s={wall:.1f} peak_rss_mb={rss:.0f} completed={s['completed']} steps={s['num_steps']} "
          f"req/s={s['request_throughput']:.1f} p99_ttft_ms={s['p99_ttft_ms']:.0f} load_imbalance={s['load_imbalance']:.3f} "
          f"simulated_s={s['simulated_time_s']:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
