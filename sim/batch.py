"""What one engine step computes: the scheduler's output and the batch shape the cost model prices.

`StepBatch` is plain data handed from a scheduler to the engine and the cost model.  Its shape
fields are the only inputs of `sim.cost_model.step_time_s`, so the cost of a step never depends
on anything but what the step computes.

Plain classes with explicit `__init__`, not dataclasses: mypyc compiles them to native classes,
whereas a dataclass keeps the interpreted `__init__` that `dataclasses` generates (a StepBatch
is made for every step: that `__init__` cost ~3 % of a 100k-request run).
"""

from __future__ import annotations

import numpy as np

from sim.request import Request


class StepBatch:
    """One step: which requests run how many tokens, and the aggregate shape."""

    __slots__ = ("scheduled", "preempted", "samplers", "admitted", "admitted_hits", "num_prefill_tokens",
                 "num_decode_tokens", "decode_ctx_tokens", "prefill_pairs", "num_prefill_seqs", "swap_in_blocks",
                 "swap_out_blocks", "copy_blocks", "stale", "stale_members", "num_members", "clock_after",
                 "num_spec_tokens", "spec_drafts", "num_draft_seqs", "draft_ctx_tokens")

    def __init__(self) -> None:
        self.scheduled: list[tuple[Request, int]] = []   # (request, new tokens); v1: only when recorded
        self.preempted: list[Request] = []
        self.samplers: list[Request] = []       # who samples a token (v1: requests outside the decode set)
        self.admitted: list[Request] = []       # requests taken from the waiting queue this step
        self.admitted_hits: list[int] = []      # their prefix-cache hit tokens at admission
        self.num_prefill_tokens = 0             # tokens of requests with more than one new token (prompt chunks, recompute)
        self.num_decode_tokens = 0              # requests with exactly one new token
        self.decode_ctx_tokens = 0              # sum over decodes of the context they attend to (incl. the new token)
        self.prefill_pairs = 0.0                # sum over prefills of q * (prefix + (q + 1) / 2): causal attention work
        self.num_prefill_seqs = 0
        self.swap_in_blocks = 0                 # v0: KV blocks copied host -> device this step
        self.swap_out_blocks = 0                # v0: KV blocks copied device -> host this step
        self.copy_blocks = 0                    # v0: copy-on-write block copies this step
        self.stale: list[Request] = []          # v1 async: samplers preempted while in flight
        self.stale_members: list[bool] = []     # v1: was that stale request a decode-set member
        self.num_members = 0                    # v1: decode-set members scheduled (one token each)
        self.clock_after = 0                    # v1: the scheduler's step clock after this step
        self.num_spec_tokens = 0                # spec decode: draft tokens verified (decodes carry 1 + drafts tokens)
        self.spec_drafts: list[int] = []        # spec decode: drafts scheduled per sampler (aligned)
        self.num_draft_seqs = 0                 # spec decode: sequences the proposer drafts for after this step
        self.draft_ctx_tokens = 0               # spec decode: their context tokens (the drafter's attention reads)

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

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens + self.num_spec_tokens

    @property
    def is_empty(self) -> bool:
        return self.num_tokens == 0 and not self.preempted and not self.swap_out_blocks and not self.swap_in_blocks


class StepOutcome:
    """What applying one step's output changed."""

    __slots__ = ("first_tokens", "finished", "sampled", "itl_gaps_s", "num_uniform_gaps", "num_tokens")

    def __init__(self, first_tokens: list[Request], finished: list[Request], sampled: list[Request] | None = None,
                 itl_gaps_s: np.ndarray | None = None, num_uniform_gaps: int = 0, num_tokens: int = 0) -> None:
        self.first_tokens = first_tokens
        self.finished = finished
        self.sampled: list[Request] = [] if sampled is None else sampled   # object-style schedulers only
        self.itl_gaps_s = itl_gaps_s                 # gaps not equal to the step's duration
        self.num_uniform_gaps = num_uniform_gaps     # tokens whose gap is exactly the step's duration
        self.num_tokens = num_tokens                 # tokens produced this step
