"""Speculative decoding's per-step half, compiled with mypyc (`setup_native.py`): a replica's
acceptance draws and vLLM's SpecDecodingStats counters (`SpecDecoder`), and the proposer's share
of a step's time (`ProposerCost`, `proposer_time_s`).  The scheduler (`sim.scheduler_spec`) and
the step price (`sim.cost_model`) call them every step; the configuration, the acceptance model,
the drafter's memory and the summary are in `sim.spec_decode`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

DRAW_CHUNK = 4096                                   # accepted lengths drawn per refill


class SpecDecoder:
    """One replica's acceptance draws and vLLM's SpecDecodingStats counters
    (vllm/v1/spec_decode/metrics.py `observe_draft`)."""

    def __init__(self, cfg: Any, rng: np.random.Generator):
        """`cfg`: a `sim.spec_decode.SpeculativeConfig`."""
        self.k: int = cfg.num_speculative_tokens          # (typed: cfg is Any here)
        self.rates = np.asarray(cfg.rates, dtype=np.float64)
        self.num_lookahead_tokens: int = cfg.num_lookahead_tokens
        self.rng = rng
        self.buf: list[int] = []               # accepted lengths for a full k-token draft
        self.pos = 0
        self.num_draft_tokens = 0              # vllm:spec_decode_num_draft_tokens
        self.accepted_hist: list[int] = [0] * (self.k + 1)  # drafts by accepted length: the other counters derive from it
        self.num_emitted_tokens = 0            # tokens handed to clients by verified sequences
        self.num_verify_steps = 0              # steps that verified drafts
        self.num_verified_seqs = 0             # sequences verified, summed over those steps

    def refill(self) -> None:
        """DRAW_CHUNK accepted lengths: per draft, the leading positions whose uniform draw falls
        under its conditional rate (column by column: cumprod along a row of k is slow)."""
        ok = self.rng.random((DRAW_CHUNK, self.k)) < self.rates
        run = ok[:, 0].copy()
        acc = run.astype(np.int64)
        for i in range(1, self.k):
            run &= ok[:, i]
            acc += run
        self.buf = acc.tolist()
        self.pos = 0

    def draw(self, num_drafted: int) -> int:
        """Accepted drafts out of `num_drafted` (a prefix of a k-draft: min(accepted of k, n))."""
        if self.pos >= len(self.buf):
            self.refill()
        a: int = self.buf[self.pos]
        self.pos += 1
        return a if a < num_drafted else num_drafted

    def observe(self, num_drafted: int, num_accepted: int) -> None:
        self.accepted_hist[num_accepted] += 1
        self.num_draft_tokens += num_drafted

    @property
    def num_drafts(self) -> int:                                 # vllm:spec_decode_num_drafts
        return sum(self.accepted_hist)

    @property
    def num_accepted_tokens(self) -> int:                        # vllm:spec_decode_num_accepted_tokens
        return sum(j * n for j, n in enumerate(self.accepted_hist))

    @property
    def num_accepted_tokens_per_pos(self) -> list[int]:          # ..._num_accepted_tokens_per_pos
        h = self.accepted_hist
        return [sum(h[i + 1:]) for i in range(self.k)]

    def end_step(self, num_seqs: int, num_emitted: int) -> None:
        if num_seqs:
            self.num_verify_steps += 1
            self.num_verified_seqs += num_seqs
            self.num_emitted_tokens += num_emitted


@dataclass(frozen=True, slots=True)
class ProposerCost:
    """What the proposer adds to a step: k forward passes of the drafter over the sequences that
    sampled (roofline of `draft_profile`), or the n-gram matcher's CPU time."""

    num_speculative_tokens: int
    cpu_s_per_seq: float = 0.0
    draft_profile: Any = None                  # sim.cost_model.CostProfile of the drafter, or None
    kv_dtype: str = "auto"
    block_size: int = 16
    # per num_seqs: (linear-layer seconds, attention intercept + per-sequence seconds, seconds per
    # context token, all-reduce seconds or None), the terms of one pass that depend on num_seqs only
    # (a step asks for the same few sizes over and over; filled on first use)
    by_num_seqs: dict[int, tuple[float, float, float, float | None]] = field(
        default_factory=dict, compare=False, repr=False)


def proposer_time_s(pc: ProposerCost, num_seqs: int, ctx_tokens: int) -> float:
    """Seconds the proposer adds to a step that drafts for `num_seqs` sequences attending to
    `ctx_tokens` context tokens in all: k decode passes of the drafter (linear layers on
    `num_seqs` tokens, one attention read of the drafter's KV), or n-gram CPU time."""
    if num_seqs == 0:
        return 0.0
    p = pc.draft_profile
    if p is None:
        return pc.cpu_s_per_seq * num_seqs
    terms = pc.by_num_seqs.get(num_seqs)
    if terms is None:
        a = p.attention(p.decode_attention, pc.kv_dtype, pc.block_size)
        ar = (p.allreduce_calls_per_step * p.allreduce_s_per_call + p.allreduce_s_per_token * num_seqs
              if p.allreduce_calls_per_step else None)
        terms = pc.by_num_seqs[num_seqs] = (p.linear_s(num_seqs), a.intercept_s + a.s_per_seq * num_seqs,
                                            a.s_per_kv_token, ar)
    lin, per_seqs, per_ctx, ar = terms
    one = lin + (per_seqs + per_ctx * ctx_tokens)    # the float operations in the order of the formula
    if ar is not None:
        one += ar
    return pc.num_speculative_tokens * one
