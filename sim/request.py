"""Runtime state of one sequence in the engine, modelled the way vLLM v1 models it.

A request never has "phases": `num_computed_tokens` catches up with `num_tokens`
(prompt + generated).  Chunked prefill, preemption by recompute and prefix-cache hits are then
just different ways the counter moves (vllm/v1/request.py, vLLM 0.32).

Requests are plain data (`__slots__`, no SimPy, no methods with side effects on other objects).
"""

from __future__ import annotations

from array import array
from enum import IntEnum

import numpy as np


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    SWAPPED = 3
    FINISHED = 4


class Request:
    """One sequence.  Invariants: 0 <= num_computed_tokens <= num_tokens;
    len(block_ids) * block_size >= num_computed_tokens while RUNNING (paged allocator)."""

    __slots__ = (
        "req_id", "parent_id", "arrival_s", "num_prompt_tokens", "max_tokens", "segments",
        "content_key", "output_key", "priority", "head_key", "lends_chain",
        "status", "num_computed", "num_output", "admit_seq",
        "blocks", "nblocks", "prev_nblocks", "num_public_blocks", "num_cached_blocks", "prefix_hashes",
        "ph", "in_decode_set", "version", "base_computed", "base_clock", "base_output", "base_upd", "join_clock", "leave_clock", "cached_on_admit",
        "num_spec_tokens",
        "reserved_tokens", "swapped_block_ids", "group",
        "first_scheduled_s", "first_token_s", "last_token_s", "finished_s", "num_preemptions",
        "prefix_hit_tokens", "replica", "last_sched_step", "finish_version",
    )

    def __init__(self, req_id: int, arrival_s: float, num_prompt_tokens: int, max_tokens: int,
                 segments: tuple[tuple[int, int], ...] = (), content_key: int = -1,
                 parent_id: int = -1, priority: int = 0, head_key: int = -1, lends_chain: bool = False):
        self.req_id = req_id                    # unique id in the run (children of n>1 get their own)
        self.parent_id = parent_id if parent_id >= 0 else req_id
        self.arrival_s = arrival_s              # when the request reached the engine
        self.num_prompt_tokens = num_prompt_tokens
        self.max_tokens = max_tokens            # output tokens to generate (ignore_eos semantics)
        self.segments = segments                # shared-content runs at the head of the prompt
        self.content_key = content_key if content_key >= 0 else self.parent_id  # prompt identity
        self.output_key = req_id                # generated tokens are unique to this sequence
        self.priority = priority
        self.head_key = head_key                # sessions: the previous turn's content key (its segments head ours)
        self.lends_chain = lends_chain          # sessions: a next turn resumes from our hash chain (sim.block_hash)
        self.status = Status.WAITING
        self.num_computed = 0                   # vLLM num_computed_tokens
        self.num_output = 0                     # generated tokens so far (num_tokens = prompt + output)
        self.admit_seq = -1                     # order in vLLM's running list (admission order)
        self.blocks: np.ndarray | None = None   # block table (physical ids), capacity for the whole sequence
        self.nblocks = 0                        # entries of `blocks` in use
        self.prev_nblocks = 0                   # table length before the last free (private prefix hits)
        self.num_public_blocks = -1             # leading blocks with shareable content (-1: not computed yet)
        self.num_cached_blocks = 0              # leading blocks already registered in the prefix cache
        self.prefix_hashes: array[int] | None = None  # lazily computed hashes of shared leading blocks
        self.ph = 0                             # async: output placeholders (tokens in flight)
        self.num_spec_tokens = 0                # spec decode: draft tokens it carries into the next step (vLLM len(spec_token_ids))
        self.in_decode_set = False              # counters implicit in the scheduler's step clock
        self.version = 0                        # invalidates calendar entries when the request leaves the decode set
        self.base_computed = 0                  # decode set: num_computed at base_clock
        self.base_clock = 0
        self.base_output = 0                    # decode set: num_output once the batch at base_upd is applied
        self.base_upd = 0
        self.join_clock = 0
        self.leave_clock = -1
        self.cached_on_admit = False            # ever adopted prefix-hit blocks (they may be shared)
        self.reserved_tokens = 0                # contiguous baselines: slots reserved up front
        self.swapped_block_ids: list[int] = []  # v0: CPU blocks holding this sequence while swapped
        self.group: object | None = None        # v0: the sequence group (n > 1 shares prompt blocks)
        self.first_scheduled_s = -1.0
        self.first_token_s = -1.0
        self.last_token_s = -1.0
        self.finished_s = -1.0
        self.num_preemptions = 0
        self.prefix_hit_tokens = -1             # local prefix-cache hit at first admission (-1: never admitted)
        self.replica = -1
        self.last_sched_step = -1
        self.finish_version = 0                 # invalidates stale completion-heap entries

    @property
    def block_ids(self) -> list[int]:
        """The block table as a list (tests, traces)."""
        return [] if self.blocks is None else self.blocks[: self.nblocks].tolist()

    def __repr__(self) -> str:
        return (f"Request({self.req_id}, {self.status.name}, prompt={self.num_prompt_tokens}, "
                f"max={self.max_tokens}, computed={self.num_computed}, out={self.num_output})")


def admit_seq_of(r: Request) -> int:
    """Sort key of requests: the order they entered the running list (vLLM's running-list order).
    A module-level function, not a lambda: a compiled function holding a lambda allocates a
    closure environment on every call."""
    return r.admit_seq


def admit_seq_of_pair(e: tuple[Request, int]) -> int:
    """Sort key of (request, tokens) pairs: the order requests entered the running list."""
    return e[0].admit_seq
