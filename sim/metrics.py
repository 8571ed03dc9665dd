"""Recording a run and summarising it under vLLM's metric names.

The recorder is called by the engine once per step and once per finished request; it keeps
per-request columns (numpy, indexed by the workload row) and per-step columns (Python lists,
turned into arrays at the end).  Per-token events never exist: a request's tokens are emitted at
the ends of the steps that sample them, so inter-token latencies (ITL) are the gaps between
those step ends.

Definitions follow `vllm bench serve` (vllm/benchmarks/serve.py, vLLM 0.32):
TTFT = first token - send time; TPOT = (E2EL - TTFT) / (output tokens - 1) for requests with more
than one token; ITL = every gap between consecutive tokens of a request; E2EL = last token - send
time; goodput = requests meeting every SLO given / benchmark duration.  `kv_cache_usage` is vLLM's
`1 - free / (num_gpu_blocks - 1)`.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from sim.batch import StepBatch
from sim.kv_state import KVState
from sim.request import Request

UNIFORM_CHUNK = 4096      # uniform ITL pairs buffered in lists before they join the arrays


@dataclass
class StepColumns:
    replica: list[int]
    start_s: list[float]
    duration_s: list[float]
    num_prefill_tokens: list[int]
    num_decode_tokens: list[int]
    num_running: list[int]
    num_waiting: list[int]
    num_preempted: list[int]
    num_finished: list[int]
    kv_cache_usage: list[float]
    kv_token_state_frac: list[float]
    kv_internal_frag_frac: list[float]
    kv_reserved_frac: list[float]
    kv_cached_free_frac: list[float]
    kv_external_frag_frac: list[float]
    swap_in_blocks: list[int]
    swap_out_blocks: list[int]

    @classmethod
    def empty(cls) -> StepColumns:
        return cls(*([] for _ in range(len(fields(cls)))))


class Recorder:
    """Collects per-request and per-step observations during one run."""

    def __init__(self, num_requests: int, record_steps: bool = True):
        m = num_requests
        # Per-request columns as views of two row-major tables (a request's times share one
        # cache line, its counts another): a request is touched at its send, admission, first
        # token and finish, and under a closed loop the rows in flight lie apart in the table
        # (sessions' rows are in an estimated send order), where one array per column cost a
        # cache miss per column per touch.
        times = np.full((m, 4), np.nan)
        counts = np.zeros((m, 6), dtype=np.int64)
        self.send_s = times[:, 0]
        self.first_token_s = times[:, 1]
        self.finish_s = times[:, 2]
        self.first_scheduled_s = times[:, 3]
        self.output_tokens = counts[:, 0]
        self.prompt_tokens = counts[:, 1]
        self.preemptions = counts[:, 2]
        self.prefix_hit_tokens = counts[:, 3]
        self.replica = counts[:, 4]
        self.replica[:] = -1
        self.children_left = counts[:, 5]
        self.rejected = np.zeros(m, dtype=bool)          # turned away by admission control
        self.kv_transfer_s: list[float] = []             # P/D: each prompt's KV transfer (queueing included)
        self.itl_gaps = array("d")                       # gaps kept one by one
        # (gap, how many tokens had exactly it), one pair per step: typed arrays, 16 bytes a step,
        # filled UNIFORM_CHUNK pairs at a time from two lists (a list append is native code here,
        # an array's a Python method call); private: only `itl_samples`, which flushes, reads them
        self._uniform_gap_array = array("d")
        self._uniform_count_array = array("q")
        self._uniform_gaps: list[float] = []
        self._uniform_counts: list[int] = []
        self.record_steps = record_steps
        self.steps = StepColumns.empty()
        self.num_steps = 0
        self.num_swapped_out_blocks = 0
        self.num_swapped_in_blocks = 0
        self.num_copied_blocks = 0                        # v0 copy-on-write block copies
        # duration-weighted sums over steps (kept even without the step table)
        self.busy_s = 0.0
        # the six KVState fractions, weighted: native doubles (a list's items are boxed floats,
        # six allocations a step); `kv_weighted` reads them as a list
        self._kv_w0 = 0.0
        self._kv_w1 = 0.0
        self._kv_w2 = 0.0
        self._kv_w3 = 0.0
        self._kv_w4 = 0.0
        self._kv_w5 = 0.0
        self.kv_usage_max = 0.0
        self.running_weighted = 0.0

    # ------------------------------------------------------------------ events
    def on_send(self, row: int, now_s: float, prompt_tokens: int, n: int) -> None:
        self.send_s[row] = now_s
        self.prompt_tokens[row] = prompt_tokens
        self.children_left[row] = n

    def on_reject(self, row: int) -> None:
        self.rejected[row] = True

    def on_admitted(self, now_s: float, admitted: list[Request]) -> None:
        fs = self.first_scheduled_s
        for req in admitted:
            row = req.parent_id
            v = fs[row]
            if v != v:                        # NaN: not scheduled before
                fs[row] = now_s

    def on_tokens(self, now_s: float, step_s: float, outcome: Any) -> None:
        """ITL gaps: those equal to this step's duration (a request that also produced a token in
        the previous step) are counted, the rest (after preemption, idle gaps) kept one by one."""
        ft = self.first_token_s
        for req in outcome.sampled:          # object-style schedulers
            if req.last_token_s >= 0.0:
                self.itl_gaps.append(now_s - req.last_token_s)
            req.last_token_s = now_s
        if outcome.num_uniform_gaps:
            self._uniform(step_s, outcome.num_uniform_gaps)
        g = outcome.itl_gaps_s
        if g is not None and g.size:
            self.itl_gaps.extend(g.tolist())
        for req in outcome.first_tokens:
            row = req.parent_id
            v = ft[row]
            if v != v:                        # NaN: the request's first token (of any of its samples)
                ft[row] = now_s

    def on_finish(self, now_s: float, req: Request) -> bool:
        """Record a finished sequence; True when its whole request (all n samples) is done."""
        row = req.parent_id
        self.output_tokens[row] += req.num_output
        if req.num_preemptions:
            self.preemptions[row] += req.num_preemptions
        hit = req.prefix_hit_tokens
        if hit > 0 and hit > self.prefix_hit_tokens[row]:
            self.prefix_hit_tokens[row] = hit
        self.replica[row] = req.replica
        left = int(self.children_left[row]) - 1
        self.children_left[row] = left
        if left == 0:
            self.finish_s[row] = now_s
            return True
        return False

    def _uniform(self, gap_s: float, count: int) -> None:
        gaps = self._uniform_gaps
        gaps.append(gap_s)
        self._uniform_counts.append(count)
        if len(gaps) >= UNIFORM_CHUNK:
            self._flush_uniform()

    def _flush_uniform(self) -> None:
        self._uniform_gap_array.extend(self._uniform_gaps)
        self._uniform_count_array.extend(self._uniform_counts)
        self._uniform_gaps = []
        self._uniform_counts = []

    def itl_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, weights) of every inter-token gap."""
        self._flush_uniform()
        vals = np.concatenate((np.frombuffer(self._uniform_gap_array, dtype=np.float64),
                               np.frombuffer(self.itl_gaps, dtype=np.float64)))
        w = np.concatenate((np.frombuffer(self._uniform_count_array, dtype=np.int64),
                            np.ones(len(self.itl_gaps), dtype=np.int64)))
        return vals, w

    @property
    def kv_weighted(self) -> list[float]:
        """Busy-time-weighted sums of the six KVState fractions (the summary divides by busy_s)."""
        return [self._kv_w0, self._kv_w1, self._kv_w2, self._kv_w3, self._kv_w4, self._kv_w5]

    def _weigh(self, dt: float, kv: KVState, num_running: int) -> None:
        self.busy_s += dt
        u = kv[0]
        self._kv_w0 += dt * u
        self._kv_w1 += dt * kv[1]
        self._kv_w2 += dt * kv[2]
        self._kv_w3 += dt * kv[3]
        self._kv_w4 += dt * kv[4]
        self._kv_w5 += dt * kv[5]
        if u > self.kv_usage_max:
            self.kv_usage_max = u
        self.running_weighted += dt * num_running

    def on_decode_step(self, replica: int, start_s: float, duration_s: float, num_members: int,
                       num_running: int, num_waiting: int, kv: KVState, num_finished: int = 0,
                       usage_after: float | None = None) -> None:
        """A quiet step (only decodes; the last of a finishing stretch finishes `num_finished`
        requests, `usage_after` being the KV usage once they are freed, as in `on_step`): its
        tokens' gaps and its step row."""
        self._uniform(duration_s, num_members)
        self.num_steps += 1
        self._weigh(duration_s, kv, num_running)
        if not self.record_steps:
            return
        s = self.steps
        s.replica.append(replica)
        s.start_s.append(start_s)
        s.duration_s.append(duration_s)
        s.num_prefill_tokens.append(0)
        s.num_decode_tokens.append(num_members)
        s.num_running.append(num_running)
        s.num_waiting.append(num_waiting)
        s.num_preempted.append(0)
        s.num_finished.append(num_finished)
        s.kv_cache_usage.append(kv[0] if usage_after is None else usage_after)
        s.kv_token_state_frac.append(kv[1])
        s.kv_internal_frag_frac.append(kv[2])
        s.kv_reserved_frac.append(kv[3])
        s.kv_cached_free_frac.append(kv[4])
        s.kv_external_frag_frac.append(kv[5])
        s.swap_in_blocks.append(0)
        s.swap_out_blocks.append(0)

    def on_decode_steps(self, replica: int, starts_s: list[float], durations_s: list[float], first: int, last: int,
                        num_members: int, num_running: int, num_waiting: int, states: list[KVState]) -> None:
        """`on_decode_step` for steps first <= j < last of a quiet stretch, in one call."""
        for j in range(first, last):
            self.on_decode_step(replica, starts_s[j], durations_s[j], num_members, num_running, num_waiting, states[j])

    def on_decode_rows(self, replica: int, rows: list[tuple[int, float, float, KVState]], num_running: int,
                       num_waiting: int) -> None:
        """`on_decode_step` for each (members, start, duration, KV state) of a PP lane stretch."""
        for d, start_s, duration_s, kv in rows:
            self.on_decode_step(replica, start_s, duration_s, d, num_running, num_waiting, kv)

    def on_step(self, replica: int, start_s: float, duration_s: float, batch: StepBatch, num_finished: int,
                num_running: int, num_waiting: int, kv: KVState,
                usage_after: float | None = None) -> None:
        """`kv`: the KV state while the step ran (weighted by its duration in the summary);
        `usage_after`: usage once the step's finished requests are freed, which is what vLLM's
        SchedulerStats.kv_cache_usage logs for the step and the step table keeps (None: kv[0])."""
        self.num_steps += 1
        self.num_swapped_in_blocks += batch.swap_in_blocks
        self.num_swapped_out_blocks += batch.swap_out_blocks
        self.num_copied_blocks += batch.copy_blocks
        self._weigh(duration_s, kv, num_running)
        if not self.record_steps:
            return
        s = self.steps
        s.replica.append(replica)
        s.start_s.append(start_s)
        s.duration_s.append(duration_s)
        s.num_prefill_tokens.append(batch.num_prefill_tokens)
        s.num_decode_tokens.append(batch.num_decode_tokens)
        s.num_running.append(num_running)
        s.num_waiting.append(num_waiting)
        s.num_preempted.append(len(batch.preempted))
        s.num_finished.append(num_finished)
        s.kv_cache_usage.append(kv[0] if usage_after is None else usage_after)
        s.kv_token_state_frac.append(kv[1])
        s.kv_internal_frag_frac.append(kv[2])
        s.kv_reserved_frac.append(kv[3])
        s.kv_cached_free_frac.append(kv[4])
        s.kv_external_frag_frac.append(kv[5])
        s.swap_in_blocks.append(batch.swap_in_blocks)
        s.swap_out_blocks.append(batch.swap_out_blocks)
