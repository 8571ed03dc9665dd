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
