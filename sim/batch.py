"""What one engine step computes: the scheduler's output and the batch shape the cost model prices.

`StepBatch` is plain data handed from a scheduler to the engine and the cost model.  Its shape
fields are the only inputs of `sim.cost_model.step_time_s`, so the cost of a step never depends
on anything but what the step computes.

Two ways to say who samples a token: schedulers that keep requests as objects (vllm-v0) list
them in `samplers`; the columnar v1 scheduler gives slot positions in `sampler_idx` (see
`sim.running_batch`), which stay valid while the batch is in flight thanks to `low` (every slot
at or above it was popped since) and `remap` (compaction).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.request import Request

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True, eq=False)
class StepBatch:
    """One step: which requests run how many tokens, and the aggregate shape."""

    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens); v1: only when recorded
    preempted: list[Request] = field(default_factory=list)
    samplers: list[Request] = field(default_factory=list)   # object-style schedulers: who samples a token
    admitted: list[Request] = field(default_factory=list)   # requests taken from the waiting queue this step
    admitted_hits: list[int] = field(default_factory=list)  # their prefix-cache hit tokens at admission
    num_prefill_tokens: int = 0       # tokens of requests with more than one new token (prompt chunks, recompute)
    num_decode_tokens: int = 0        # requests with exactly one new token
    decode_ctx_tokens: int = 0        # sum over decodes of the context they attend to (incl. the new token)
    prefill_pairs: float = 0.0        # sum over prefills of q * (prefix + (q + 1) / 2): causal attention work
    num_prefill_seqs: int = 0
    swap_in_blocks: int = 0           # v0: KV blocks copied host -> device this step
    swap_out_blocks: int = 0          # v0: KV blocks copied device -> host this step
    copy_blocks: int = 0              # v0: copy-on-write block copies this step
    sampler_idx: np.ndarray = field(default_factory=lambda: _EMPTY)  # v1: slot positions that sample
    low: int = 1 << 62                # v1: slots >= low were popped (preempted) after scheduling
    stale: list[Request] = field(default_factory=list)     # v1 async: samplers preempted while in flight
    stale_members: list[bool] = field(default_factory=list)  # v1: was that stale request a decode-set member
    num_members: int = 0              # v1: decode-set members scheduled (one token each)
    clock_after: int = 0              # v1: the scheduler's step clock after this step
    num_spec_tokens: int = 0          # spec decode: draft tokens verified (decodes carry 1 + drafts tokens)
    spec_drafts: list[int] = field(default_factory=list)  # spec decode: drafts scheduled per sampler (aligned)
    num_draft_seqs: int = 0           # spec decode: sequences the proposer drafts for after this step
    draft_ctx_tokens: int = 0         # spec decode: their context tokens (the drafter's attention reads)

    def add(self, req: Request, num_new_tokens: int) -> None:
        """Append a scheduled request, updating the shape totals."""
        self.scheduled.append((req, num_new_tokens))
        if num_new_tokens == 1:
            self.num_decode_tokens += 1
            self.decode_ctx_tokens += req.num_computed + 1
        else:
            self.num_prefill_tokens += num_new_tokens
            self.num_prefill_seqs += 1
            self.prefill_pairs += num_new_tokens * (req.num_computed + (num_new_tokens + 1) / 2)

    def add_shape(self, num_new_tokens: int, num_computed: int) -> None:
        """Shape totals only (the columnar scheduler lists requests separately when asked)."""
        if num_new_tokens == 1:
            self.num_decode_tokens += 1
            self.decode_ctx_tokens += num_computed + 1
        else:
            self.num_prefill_tokens += num_new_tokens
            self.num_prefill_seqs += 1
            self.prefill_pairs += num_new_tokens * (num_computed + (num_new_tokens + 1) / 2)

    def add_spec_decode(self, num_new_tokens: int, num_computed: int) -> None:
        """A decode verifying `num_new_tokens - 1` drafts: one sequence, 1 + drafts query tokens,
        its KV read once up to the last draft (see sim.cost_model)."""
        self.num_decode_tokens += 1
        self.num_spec_tokens += num_new_tokens - 1
        self.decode_ctx_tokens += num_computed + num_new_tokens

    def sampler_mask_at(self, i: int) -> bool:
        idx = self.sampler_idx
        if not idx.size:
            return False
        j = int(np.searchsorted(idx, i))
        return j < idx.size and int(idx[j]) == i

    def remap(self, keep: np.ndarray, removed_before: np.ndarray) -> None:
        idx = self.sampler_idx
        if idx.size:
            inb = idx[idx < min(self.low, keep.shape[0])]
            alive = inb[keep[inb]]
            self.sampler_idx = alive - removed_before[alive]
        if self.low < keep.shape[0]:
            self.low = int(self.low - removed_before[self.low])

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens + self.num_spec_tokens

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0 and not self.preempted and not self.swap_out_blocks and not self.swap_in_blocks


@dataclass(slots=True)
class StepOutcome:
    """What applying one step's output changed."""

    first_tokens: list[Request]
    finished: list[Request]
    sampled: list[Request] = field(default_factory=list)   # object-style schedulers only
    itl_gaps_s: np.ndarray | None = None                    # gaps not equal to the step's duration
    num_uniform_gaps: int = 0                                # tokens whose gap is exactly the step's duration
    num_tokens: int = 0                                      # tokens produced this step
