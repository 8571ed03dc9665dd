"""`pagesim calibrate`: time the kernels and GEMMs of one model shard on this GPU, fit a cost profile.

    pagesim calibrate --model llama-3-8b --tp 1 --out calibrate/profiles/h100-sxm/ \
        [--gpu-name H100-SXM] [--quick] [--interpret]

Writes `<model>-tp<tp>.json` (docs/profile-schema.md, `kind: calibrated`) and the raw timings as
`<model>-tp<tp>.csv` beside it, and prints the decode kernel's bandwidth against HBM peak and each
component's error on held-out points.  Without a CUDA GPU it says so in one line and exits 1, unless
`--interpret` asks for the CPU pipeline check on tiny shapes (timings marked not meaningful).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROG = "pagesim calibrate"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model name (llama-3-8b, llama-3-70b, ...)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel degree; one GPU times one shard")
    p.add_argument("--out", required=True, type=Path, help="directory for the profile JSON and CSV")
    p.add_argument("--gpu-name", default=None, help="hardware preset name (default: derived from the device)")
    p.add_argument("--quick", action="store_true", help="a small grid (about a minute on a GPU)")
    p.add_argument("--interpret", action="store_true",
                   help="run on the CPU through Triton's interpreter with tiny shapes (timings not meaningful)")
    return p


def _interpreter_subprocess(argv: list[str]) -> int | None:
    """Switch to Triton's interpreter; it is read when triton is imported, so when triton is already
    loaded for the GPU, rerun this command in a child process instead and return its exit code."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return None
    if "triton" in sys.modules:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        return subprocess.call([sys.executable, "-m", "calibrate.cli", *argv], env=env)
    os.environ["TRITON_INTERPRET"] = "1"
    return None


def _log(msg: str) -> None:
    print(f"[calibrate] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    from calibrate import models
    try:
        shape = models.shard_shape(args.model, args.tp)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if args.interpret and (rc := _interpreter_subprocess(argv)) is not None:
        return rc
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as e:
        print(f"{PROG}: needs torch and triton ({e.name} missing); run `make setup-calibrate`", file=sys.stderr)
        return 2
    if not args.interpret and not torch.cuda.is_available():
        print(f"{PROG}: no CUDA GPU found; timing needs one (use --interpret for a CPU pipeline check)",
              file=sys.stderr)
        return 1
    from calibrate import fit, grid, profile, report, timing
    from calibrate.measure_attention import measure_decode, measure_prefill, tune_decode
    from calibrate.measure_linear_swap import measure_linear, measure_swap

    timer = timing.Timer(interpret=args.interpret, cpu_reps=1)
    prov = timing.provenance(timer, argv)
    if args.interpret:
        shape = models.tiny_shape(args.model)
        g = grid.interpret_grid()
        gpu = args.gpu_name or "cpu-interpreter"
    else:
        g = grid.quick_grid() if args.quick else grid.full_grid()
        gpu = args.gpu_name or timing.preset_name(prov["gpu_name"])
    t_start = time.perf_counter()
    copy_bw = timing.copy_bandwidth_bytes_per_s(timer)
    peak = timing.HBM_PEAK_BYTES_PER_S.get(gpu, copy_bw)
    prov.update(shard_shape={k: getattr(shape, k) for k in shape.__slots__},
                hbm_peak_bytes_per_s=peak, measured_d2d_copy_bytes_per_s=round(copy_bw),
                grid="interpret" if args.interpret else ("quick" if args.quick else "full"))

    rows: list[dict[str, Any]] = []
    configs: dict[str, dict[str, int]] = {}
    if g.tune_decode:
        for kv_dtype in g.kv_dtypes:
            configs[kv_dtype], tune_rows = tune_decode(shape, timer, peak, kv_dtype)
            rows += tune_rows
            _log(f"decode launch config for {kv_dtype}: {configs[kv_dtype]}")
    prov["decode_launch_config"] = configs or "kernel defaults"
    for name, step in (("decode", lambda: measure_decode(shape, g, timer, peak, configs)),
                       ("prefill", lambda: measure_prefill(shape, g, timer, peak)),
                       ("linear", lambda: measure_linear(shape, g, timer, peak)),
                       ("swap", lambda: measure_swap(shape, g, timer))):
        t0 = time.perf_counter()
        rows += step()
        _log(f"{name}: done in {time.perf_counter() - t0:.1f} s")

    linear, e_lin = fit.fit_linear(rows, shape.num_layers)
    decode, e_dec = fit.fit_decode(rows, shape.num_layers)
    prefill, e_pre = fit.fit_prefill(rows, shape.num_layers)
    swap, e_swap = fit.fit_swap(rows, shape.num_layers)
    fit_error = {**e_lin, **e_dec, **e_pre, **e_swap}
    prov["decode_bandwidth"] = report.bandwidth_summary(rows)
    prov["allreduce"] = "not measured (one GPU); take it from the roofline profile" if args.tp > 1 else "TP=1"
    prov["calibration_wall_s"] = round(time.perf_counter() - t_start, 1)
    stem = f"{args.model}-tp{args.tp}"
    prof = profile.build_profile(gpu=gpu, model=args.model, tp=args.tp, provenance=prov, linear=linear,
                                 decode=decode, prefill=prefill, swap=swap, fit_error=fit_error,
                                 csv_name=f"{stem}.csv")
    problems = profile.validate_profile(prof)
    if problems:
        print(f"{PROG}: internal error, profile does not follow the schema: {'; '.join(problems)}", file=sys.stderr)
        return 3
    path = profile.write_profile(args.out, stem, prof, rows)
    print(f"decode attention bandwidth, {shape.name} tp{args.tp} on {gpu} (peak {peak / 1e9:.0f} GB/s; "
          f"measured d2d copy {copy_bw / 1e9:.0f} GB/s):")
    print(report.bandwidth_table(rows))
    print("fit error on held-out points (step time, all layers):")
    print(report.fit_error_lines(fit_error))
    if args.interpret:
        print("NOTE: interpreter mode; these timings are not meaningful")
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
