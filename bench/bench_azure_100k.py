"""Wall time and peak memory of one 100k-request simulation (bench/azure_conv_100k.yaml).

    python bench/bench_azure_100k.py [--profile] [--steps]

Prints wall seconds (scenario load + workload + simulation + summary), peak RSS, engine steps
and the headline metrics; `--profile` writes the cProfile top 40 to bench/profile_azure_100k.txt.
The trace is read from ../shared/traces (the product itself never needs it).
"""

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
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--steps", action="store_true", help="also record the per-step table")
    args = ap.parse_args()
    overrides = ["run.record_steps=true"] if args.steps else []
    t0 = time.perf_counter()
    sc = load_scenario(HERE / "azure_conv_100k.yaml", overrides)
    prof = cProfile.Profile() if args.profile else None
    if prof:
        prof.enable()
    res = run_scenario(sc)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    s = res.summary
    print(f"wall_s={wall:.2f} peak_rss_mb={rss_mb:.0f} steps={s['num_steps']} completed={s['completed']} "
          f"req/s={s['request_throughput']:.2f} p99_ttft_ms={s['p99_ttft_ms']:.0f} mean_tpot_ms={s['mean_tpot_ms']:.1f} "
          f"preemptions={s['num_preemptions']} simulated_s={s['simulated_time_s']:.0f}")
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(40)
        (HERE / "profile_azure_100k.txt").write_text(buf.getvalue())
        print(f"profile: {HERE / 'profile_azure_100k.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
