"""Replaying a trace file as the workload: which rows, at which times.

The pipeline, in order (each step documented on `TraceConfig`):

1. read the file (`sim.traces.read_trace`; arrivals in seconds from the first request);
2. window: drop requests before ``start_s`` (trace seconds), re-zero the clock at the first kept
   one, keep at most ``max_requests`` of them;
3. select ``num_requests`` rows: ``sequential`` takes the window's first rows in order;
   ``bootstrap`` draws rows with replacement through the rng and builds arrivals from inter-arrival
   gaps drawn with replacement from the window's gaps, so the trace's burstiness survives at any
   length (a 19k-row trace can drive a 100k-request run);
4. time: either multiply by ``time_scale`` (0.5 = twice as fast) or, when the arrival section sets
   a ``rate``, rescale so that the mean rate ``(N - 1) / span`` equals it (``inf``: all at t=0);
5. drop requests arriving after ``duration_s`` when the run has a duration.

Bootstrapped Mooncake rows keep their hash ids, so a row drawn twice is a full prefix hit: the
prefix-cache hit rate of a bootstrapped trace is an upper bound of the original's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from sim.requests_table import RequestTable, take
from sim.schema import Ctx, positive
from sim.traces import read_trace, resolve_path


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """``workload.trace``: a request trace to replay (arrivals) and/or draw request rows from."""

    path: str | None = None             # trace file, relative = beside the scenario file; None = no trace
    format: Literal["azure", "mooncake", "generic"] = "generic"   # see sim.traces
    time_scale: float = 1.0             # arrival_s * time_scale: 0.5 = twice as fast; not with arrival.rate
    start_s: float = 0.0                # skip the trace's first start_s seconds (trace time, before scaling)
    max_requests: int | None = None     # keep at most this many requests of the window
    sample: Literal["sequential", "bootstrap"] = "sequential"    # how num_requests rows are chosen
    use_lengths: bool = True            # token counts (and segments, n) from the trace, else from workload.lengths

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def validate(self, ctx: Ctx) -> None:
        if self.path is None and self != TraceConfig():
            raise ctx.at("path").error("required when any other trace key is set")
        positive(ctx, "time_scale", self.time_scale)
        positive(ctx, "start_s", self.start_s, allow_zero=True)
        if self.max_requests is not None:
            positive(ctx, "max_requests", self.max_requests)


def load_window(cfg: TraceConfig, ctx: Ctx) -> RequestTable:
    """Steps 1-2: the trace's rows after ``start_s`` and ``max_requests``, clock re-zeroed."""
    if cfg.path is None:
        raise ctx.at("path").error("required")
    table = read_trace(resolve_path(cfg.path, ctx), cfg.format, ctx=ctx.at("path"))
    keep = np.flatnonzero(table.arrival_s >= cfg.start_s)
    if cfg.max_requests is not None:
        keep = keep[: cfg.max_requests]
    if keep.size == 0:
        raise ctx.at("start_s").error(f"no request of {cfg.path} arrives after start_s", cfg.start_s)
    out = take(table, keep)
    return replace(out, arrival_s=out.arrival_s - out.arrival_s[0])


def select_rows(window: RequestTable, cfg: TraceConfig, count: int, rng: np.random.Generator,
                ctx: Ctx) -> np.ndarray:
    """Step 3 for rows only: indices of ``count`` rows of the window (sequential or bootstrap)."""
    if cfg.sample == "bootstrap":
        return rng.integers(0, len(window), size=count)
    if count > len(window):
        raise ctx.at("sample").error(
            f"the trace window has only {len(window)} requests but {count} are needed; "
            "set sample: bootstrap or ask for fewer requests")
    return np.arange(count)


def replay(cfg: TraceConfig, *, rate: float | None, num_requests: int | None, duration_s: float | None,
           rng: np.random.Generator, ctx: Ctx) -> RequestTable:
    """Steps 1-5: the trace as a timed workload.  ``num_requests=None`` means the whole window
    (sequential) or as many as fit in ``duration_s`` (bootstrap)."""
    window = load_window(cfg, ctx)
    gaps = np.diff(window.arrival_s)
    mean_gap = float(gaps.mean()) if gaps.size else 0.0
    if rate is not None and math.isfinite(rate) and mean_gap == 0.0:
        raise ctx.at("path").error("cannot rescale to arrival.rate: all trace arrivals are at the same time")
    factor = cfg.time_scale if rate is None or not math.isfinite(rate) else 1.0 / (rate * mean_gap)

    if cfg.sample == "sequential":
        count = len(window) if num_requests is None else num_requests
        out = take(window, select_rows(window, cfg, count, rng, ctx))
        arrival = out.arrival_s
    else:
        if num_requests is None:
            if duration_s is None:
                raise ctx.at("sample").error("bootstrap needs num_requests or a run duration")
            if mean_gap * factor == 0.0 or (rate is not None and not math.isfinite(rate)):
                raise ctx.at("sample").error("bootstrap over a duration needs arrivals spread in time; "
                                             "set num_requests")
            cv = float(gaps.std()) / mean_gap
            count = _count_to_cover(duration_s, mean_gap * factor, cv)
        else:
            count = num_requests
        rows = rng.integers(0, len(window), size=count)
        drawn = gaps[rng.integers(0, gaps.size, size=max(count - 1, 0))] if gaps.size else np.zeros(max(count - 1, 0))
        arrival = np.concatenate(([0.0], np.cumsum(drawn)))
        if rate is not None and math.isfinite(rate) and num_requests is not None and arrival[-1] > 0:
            factor = 1.0 / (rate * float(arrival[-1]) / max(count - 1, 1))   # exact mean rate on the sample
        out = take(window, rows)

    if rate is not None and not math.isfinite(rate):
        arrival = np.zeros(len(out))
        label = "rate=inf"
    else:
        arrival = arrival * factor
        label = f"rate={rate:g}/s" if rate is not None else f"x{cfg.time_scale:g}"
    out = replace(out, arrival_s=arrival, source=f"{window.source} ({cfg.sample}, {label})")
    if duration_s is not None:
        out = take(out, np.flatnonzero(out.arrival_s <= duration_s))
    return out


def _count_to_cover(duration_s: float, mean_gap_s: float, cv: float) -> int:
    """How many bootstrapped arrivals to draw so that the last one falls past ``duration_s`` with
    overwhelming probability (10 standard deviations of a sum of i.i.d. gaps); the duration filter
    cuts the surplus."""
    expected = duration_s / mean_gap_s
    return int(expected + 10 * max(cv, 1.0) * math.sqrt(expected) + 100)
