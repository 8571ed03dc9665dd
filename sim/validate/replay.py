"""Replay a real engine's measured step times in pagesim: the schedule's semantics apart from the cost model.

`pagesim validate --engine vllm` prices pagesim's steps with a profile fitted to the engine's step
times.  When the latencies then disagree, two things can be wrong: pagesim's model of *when* a
request is scheduled and gets its tokens (arrival seen at the next step, first token at the end of
the prefill step, batching), or the step *times*.  On a shared CPU host the second dominates: the
same step shape runs 20-30 % slower for seconds at a time (a noisy neighbour slows the thread's
CPU time too, so no driver clock can subtract it), which a fitted constant-cost profile cannot
know, and a light Poisson load turns a few such steps into a different batching and a different
TTFT median.

The replay answers the first question alone: pagesim runs the same requests with the k-th step
priced at the engine's k-th measured duration.  If pagesim schedules as vLLM does, it reproduces
the engine's steps and latencies almost exactly (tiny differences remain where an arrival falls
within the driver's sleep overshoot, ~0.1 ms, of a step start).  Steps beyond the measured ones
(pagesim took more) are priced by the fitted profile and counted.
"""

from __future__ import annotations

from collections.abc import Sequence

from sim.batch import StepBatch
from sim.cost_model import StepCoster


class StepReplay:
    """Prices the k-th step of a run at `durations_s[k]`; later steps with `fallback`.  One per replica;
    it assumes the steps are priced in the order they run (sync engine, no quiet stretches)."""

    def __init__(self, durations_s: Sequence[float], fallback: StepCoster) -> None:
        self.durations_s = [float(d) for d in durations_s]
        self.fallback = fallback
        self.num_priced = 0                 # steps priced so far
        self.num_beyond_trace = 0           # of those, priced by the fallback

    def step_time_s(self, batch: StepBatch) -> float:
        k = self.num_priced
        self.num_priced += 1
        if k < len(self.durations_s):
            return self.durations_s[k]
        self.num_beyond_trace += 1
        return self.fallback.step_time_s(batch)



def host_drift(start_s: Sequence[float], measured_s: Sequence[float], predicted_s: Sequence[float],
               shape: Sequence[int], window_s: float = 1.0, min_steps: int = 5,
               min_windows: int = 3) -> dict[str, float] | None:
    """How much the host's speed wandered during the run, from the steps of each `shape` (give the
    number of decodes of decode-only steps, -1 for the rest, which are left out): a step's speed is
    its measured / fitted time over the median of that ratio among steps of its shape (so a misfit
    of one shape, which is there all run long, cancels), and each `window_s` of wall clock with at
    least `min_steps` such steps gets the median.  A constant cost model is right on average only:
    a range like 0.8-1.2 means the same step ran 20 % faster or slower for a second at a time, and
    latencies that depend on which steps coincide with which arrivals (TTFT under a light load)
    miss by that much whatever the model.  None: fewer than `min_windows` windows."""
    by_shape: dict[int, list[float]] = {}
    for m, p, k in zip(measured_s, predicted_s, shape, strict=True):
        if k >= 0 and p > 0:
            by_shape.setdefault(k, []).append(m / p)
    typical = {k: _median(v) for k, v in by_shape.items()}
    speed: dict[int, list[float]] = {}
    for t, m, p, k in zip(start_s, measured_s, predicted_s, shape, strict=True):
        if k >= 0 and p > 0 and len(by_shape[k]) >= min_steps:
            speed.setdefault(int(t // window_s), []).append(m / p / typical[k])
    medians = sorted(_median(r) for r in speed.values() if len(r) >= min_steps)
    if len(medians) < min_windows:
        return None
    return {"window_s": window_s, "num_windows": len(medians), "min_ratio": medians[0], "max_ratio": medians[-1],
            "spread": medians[-1] / medians[0] - 1.0}


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])
