"""Reading `vllm bench serve --save-result --save-detailed` JSON as a measured trace.

vLLM 0.32 (vllm/benchmarks/serve.py, `benchmark()`'s result dict) writes, per request and in send
order: ``input_lens``, ``output_lens`` (tokens actually received), ``ttfts`` and ``latencies``
(seconds), ``itls`` (a list of gaps per request, seconds), ``start_times`` (the client's
``time.perf_counter()`` at send) and ``errors`` ("" when the request succeeded); plus the run's
``duration`` and ``completed``.  Without step times only request-level figures can be compared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.errors import ScenarioError

REQUIRED = ("input_lens", "output_lens", "ttfts", "itls", "start_times")


@dataclass(frozen=True)
class BenchTrace:
    """The successful requests of one benchmark run, in send order."""

    arrival_s: np.ndarray              # seconds since the first send
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    ttft_s: np.ndarray
    e2el_s: np.ndarray
    itl_s: list[list[float]]
    duration_s: float                  # the benchmark's own duration (first send to last response)
    num_failed: int
    meta: dict[str, Any]               # model_id, request_rate, date, ... as written


def looks_like_bench(obj: Any) -> bool:
    return isinstance(obj, dict) and "ttfts" in obj and "input_lens" in obj


def read_bench(path: str | Path) -> BenchTrace:
    """Read one result file; every problem is a one-line ScenarioError naming the key."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ScenarioError(str(path), "", f"cannot read a vllm bench result: {e}") from None
    if not isinstance(d, dict):
        raise ScenarioError(str(path), "", "expected a JSON object (vllm bench serve --save-result)")
    for key in REQUIRED:
        if not isinstance(d.get(key), list):
            hint = " (run vllm bench serve with --save-detailed)" if key in ("ttfts", "itls", "start_times") else ""
            raise ScenarioError(str(path), key, f"missing per-request list{hint}")
    n = len(d["input_lens"])
    for key in REQUIRED:
        if len(d[key]) != n:
            raise ScenarioError(str(path), key, f"has {len(d[key])} entries, input_lens has {n}")
    errors = d.get("errors") or [""] * n
    ok = np.array([not e for e in errors], dtype=bool)
    if not ok.any():
        raise ScenarioError(str(path), "errors", "no request succeeded")
    start = np.asarray(d["start_times"], float)
    ttft = np.asarray(d["ttfts"], float)
    itls = [list(map(float, x)) for x in d["itls"]]
    if isinstance(d.get("latencies"), list) and len(d["latencies"]) == n:
        e2el = np.asarray(d["latencies"], float)
    else:   # older files: the latency is the first token plus every gap
        e2el = ttft + np.array([sum(x) for x in itls])
    keep = np.flatnonzero(ok)
    t0 = float(start.min())
    meta = {k: d[k] for k in ("model_id", "backend", "date", "request_rate", "burstiness", "max_concurrency",
                              "num_prompts", "completed") if k in d}
    return BenchTrace(arrival_s=start[keep] - t0, prompt_tokens=np.asarray(d["input_lens"], np.int64)[keep],
                      output_tokens=np.asarray(d["output_lens"], np.int64)[keep], ttft_s=ttft[keep],
                      e2el_s=e2el[keep], itl_s=[itls[i] for i in keep], duration_s=float(d.get("duration") or 0.0),
                      num_failed=int((~ok).sum()), meta=meta)
