"""The workload as data: one column per request attribute, in arrival order.

A `RequestTable` is what every workload source (synthetic generators, trace replays) produces and
what the engine consumes.  It is columnar (numpy arrays) so that 100k-request workloads cost
megabytes, not hundreds of Python objects per request.

Prompt content and prefix sharing: the first tokens of a prompt may be described by *segments*,
runs of ``(segment_id, num_tokens)``.  Two prompts whose segment lists agree on their first k runs
hold identical tokens over those runs (a shared system prompt, a Mooncake 512-token hash block, an
earlier turn of the same conversation).  Tokens past the listed segments are unique to the request.
Runs may reach past the prompt into the output: they then name the tokens the request will
generate (a session turn's answer, which the next turn resends as prompt; `sim.sessions`).
Segment ids are plain ints so block hashes never depend on Python's string-hash randomisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sim.block_hash import tokens_covered

Segments = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class RequestTable:
    """Requests sorted by arrival time.  Invariants (checked by `check()`):
    arrays share one length; arrival_s is non-decreasing over its non-NaN entries (NaN: a session
    follow-up whose send the engine decides); prompt_tokens >= 1; output_tokens >= 1; n >= 1;
    segment lengths sum to at most the prompt plus output length."""

    arrival_s: np.ndarray            # float64, seconds since the start of the run
    prompt_tokens: np.ndarray        # int64, prompt length in tokens
    output_tokens: np.ndarray        # int64, tokens to generate (ignore_eos: exactly this many)
    n: np.ndarray | None = None      # int64 parallel samples per request (vLLM SamplingParams.n); None = all 1
    segments: list[Segments] | None = None  # per request shared-content runs; None = all prompts unique
    max_concurrency: int | None = None      # closed loop: at most this many requests in flight (vllm bench --max-concurrency)
    source: str = "synthetic"               # provenance shown in reports ("azure-conv trace x0.5", ...)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # optional columns (priority; session, turn, user, think_s)

    def __len__(self) -> int:
        return int(self.arrival_s.shape[0])

    def n_of(self, i: int) -> int:
        return 1 if self.n is None else int(self.n[i])

    def segments_of(self, i: int) -> Segments:
        return () if self.segments is None else self.segments[i]

    def check(self) -> None:
        """Raise ValueError when an invariant above does not hold (a bug in a workload source)."""
        m = len(self)
        for name in ("prompt_tokens", "output_tokens"):
            if getattr(self, name).shape != (m,):
                raise ValueError(f"{name} has shape {getattr(self, name).shape}, expected ({m},)")
        timed = self.arrival_s[~np.isnan(self.arrival_s)]     # NaN: a follow-up the engine sends (sim.sessions)
        if timed.size and np.any(np.diff(timed) < 0):
            raise ValueError("arrival_s is not sorted")
        if m and (self.prompt_tokens.min() < 1 or self.output_tokens.min() < 1):
            raise ValueError("prompt_tokens and output_tokens must be >= 1")
        if self.n is not None and (self.n.shape != (m,) or (m and self.n.min() < 1)):
            raise ValueError("n must have one entry >= 1 per request")
        if self.segments is not None:
            if len(self.segments) != m:
                raise ValueError("segments must have one entry per request")
            over = np.flatnonzero(np.array(tokens_covered(self.segments), dtype=np.int64)
                                  > self.prompt_tokens + self.output_tokens)
            if over.size:
                raise ValueError(f"request {int(over[0])}: segments are longer than its prompt and output")


def take(table: RequestTable, idx: np.ndarray) -> RequestTable:
    """The rows ``idx`` of ``table`` (any order, repeats allowed), arrivals included as they are."""
    return RequestTable(
        table.arrival_s[idx], table.prompt_tokens[idx], table.output_tokens[idx],
        n=None if table.n is None else table.n[idx],
        segments=None if table.segments is None else list(map(table.segments.__getitem__, np.asarray(idx).tolist())),
        max_concurrency=table.max_concurrency, source=table.source,
        extra={k: v[idx] for k, v in table.extra.items()},
    )
