"""One engine replica as plain state: its scheduler, KV cache, step coster and router counters.

Routing policies live in `sim.router`.  The replica knows nothing about SimPy except how to hand the engine an event to wait on when
idle (`wait_for_work`), which `add_request` triggers.  Compiled with mypyc (`setup_native.py`):
the compiled loops (`sim.run_ahead`, `sim.pipe_loop`, `sim.quiet`) read and update it at every
step.  The scheduler (v0 or v1), its KV manager and the coster (a `StepCoster`, or the runner's
replay of measured step times) are typed `Any`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import simpy

from sim.cost_model import StepCoster
from sim.kv_state import KVState
from sim.request import Request


class Replica:
    """A vLLM engine instance (one TP group of GPUs)."""

    def __init__(self, index: int, scheduler: Any, coster: StepCoster, async_scheduling: bool,
                 check_invariants: bool = False):
        self.index = index
        self.scheduler: Any = scheduler
        self.kv: Any = scheduler.kv
        self.coster: Any = coster
        self.async_scheduling = async_scheduling
        self.check_invariants = check_invariants
        self.outstanding_tokens = 0       # router signal: prompt + output tokens of unfinished requests
        # Requests added since the scheduler last scheduled.  vLLM adds a request to its scheduler
        # only between steps, so a step's num_waiting (SchedulerStats, made in update_from_output)
        # leaves out requests that arrived while it ran; pagesim adds them at once and subtracts these.
        self.num_unseen_arrivals = 0
        self.handoff: Callable[[Request, float], None] | None = None   # P/D: a prefill replica hands requests on
        self.pipeline: Any = None         # PP > 1: its sim.pipeline.PipelineClock (stages, busy time)
        self._wakeup: Any = None          # the simpy.Event an idle engine waits on

    def add_request(self, req: Request, counted: bool = False) -> None:
        """`counted`: its tokens were already added to `outstanding_tokens` (P/D: at arrival)."""
        req.replica = self.index
        if not counted:
            self.outstanding_tokens += req.num_prompt_tokens + req.max_tokens
        self.scheduler.add_request(req)
        self.num_unseen_arrivals += 1
        if self._wakeup is not None and not self._wakeup.triggered:
            self._wakeup.succeed()

    @property
    def num_waiting_seen(self) -> int:
        """Waiting requests as vLLM's step statistics count them: those the last scheduling saw."""
        return len(self.scheduler.waiting) - self.num_unseen_arrivals

    def on_finished(self, req: Request) -> None:
        self.outstanding_tokens -= req.num_prompt_tokens + req.max_tokens

    def wait_for_work(self, env: simpy.Environment) -> simpy.Event:
        """An event for the next arrival, or for the first KV-offload load to finish (sim.kv_offload)."""
        wakeup = self._wakeup = env.event()
        loading = getattr(self.scheduler, "loading", None)
        if loading:
            def wake(_: Any) -> None:
                if not wakeup.triggered:
                    wakeup.succeed()
            env.timeout(max(loading[0][0] - env.now, 0.0)).callbacks.append(wake)
        return wakeup

    def kv_state(self) -> KVState:
        """(usage, token-state, internal-fragmentation, reserved, cached-free) fractions of KV slots."""
        return self.scheduler.kv_state()

    def check(self) -> None:
        holders = self.scheduler.running + [e[2] for e in getattr(self.scheduler, "loading", ())]
        self.kv.check_invariants(holders, self.scheduler.waiting)
