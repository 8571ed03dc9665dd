"""How calibration measures time, and what it records about the machine it measured on.

On a GPU every measurement is `triton.testing.do_bench`'s median (it warms up first, flushes the
L2 cache between repetitions and times with CUDA events), so timings reflect HBM, not cache, and
one slow outlier cannot move them.  Kernels and GEMMs are captured in a CUDA graph first, as vLLM
runs its decode steps: otherwise Python's launch overhead (tens of µs) would be timed instead of
kernels that take ten.  In interpreter mode (`--interpret`, no GPU) kernels run on the
CPU through Triton's interpreter and a wall clock takes the median of a few calls: the pipeline is
exercised end to end, but the numbers say nothing about any GPU, and the provenance says so.
"""

from __future__ import annotations

import datetime as dt
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Datasheet HBM bandwidth (bytes/s) per hardware preset name, the yardstick for the decode kernel.
HBM_PEAK_BYTES_PER_S: dict[str, float] = {
    "H100-SXM": 3.35e12,
    "H100-PCIE": 2.0e12,
    "H200": 4.8e12,
    "A100-80G": 2.039e12,
    "A100-40G": 1.555e12,
    "L40S": 0.864e12,
}


@dataclass(frozen=True, slots=True)
class Timer:
    """Median seconds of a callable; `interpret` selects the CPU wall clock."""

    interpret: bool
    warmup_ms: float = 10.0     # do_bench warm-up budget
    rep_ms: float = 40.0        # do_bench measurement budget
    cpu_reps: int = 3           # wall-clock repetitions in interpreter mode

    @property
    def device(self) -> str:
        return "cpu" if self.interpret else "cuda"

    def median_s(self, fn: Callable[[], Any]) -> float:
        if not self.interpret:
            import triton.testing
            return float(triton.testing.do_bench(fn, warmup=self.warmup_ms, rep=self.rep_ms,
                                                 return_mode="median")) * 1e-3
        fn()  # warm-up: in the interpreter the first call also traces the kernel
        samples = []
        for _ in range(self.cpu_reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


    def median_s_graphed(self, fn: Callable[[], Any]) -> float:
        """Median seconds of `fn` replayed as a CUDA graph, as vLLM runs decode steps: the GPU time
        without Python's launch overhead, which would otherwise dominate kernels of ~10 µs."""
        if self.interpret:
            return self.median_s(fn)
        fn()                      # compile and warm up outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return self.median_s(graph.replay)


def preset_name(device_name: str) -> str:
    """Map torch's device name ('NVIDIA H100 80GB HBM3') onto a hardware preset name ('H100-SXM')."""
    n = device_name.upper()
    if "H100" in n:
        return "H100-PCIE" if "PCIE" in n else "H100-SXM"
    if "H200" in n:
        return "H200"
    if "A100" in n:
        return "A100-40G" if "40GB" in n else "A100-80G"
    if "L40S" in n:
        return "L40S"
    return device_name.replace("NVIDIA ", "").replace(" ", "-")


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def copy_bandwidth_bytes_per_s(timer: Timer, num_bytes: int = 1 << 30) -> float:
    """Measured device-to-device copy rate (bytes read + written per second): the practical ceiling."""
    if timer.interpret:
        num_bytes = 1 << 20
    src = torch.empty(num_bytes, dtype=torch.uint8, device=timer.device).random_(0, 255)
    dst = torch.empty_like(src)
    return 2 * num_bytes / timer.median_s(lambda: dst.copy_(src))


def provenance(timer: Timer, argv: list[str]) -> dict[str, Any]:
    """Everything needed to tell later where and how a profile was measured."""
    import triton
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command": "pagesim calibrate " + " ".join(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "timer": "CPU wall clock, median" if timer.interpret
        else (f"triton.testing.do_bench median (warmup {timer.warmup_ms} ms, rep {timer.rep_ms} ms, L2 flushed); "
              "kernels and GEMMs replayed as one-call CUDA graphs; swap: min of two medians"),
        "timings_meaningful": not timer.interpret,
    }
    if timer.interpret:
        info.update(gpu_name="none (Triton CPU interpreter)", driver="none", cuda="none",
                    note="interpreter mode: pipeline check on tiny shapes; timings are NOT meaningful")
    else:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, driver=_driver_version(), cuda=str(torch.version.cuda),
                    sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}")
    info["platform"] = f"{platform.system()} {platform.machine()}; python {sys.version.split()[0]}"
    return info
