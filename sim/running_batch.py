"""vLLM's running list as columns: the hot per-request counters in numpy arrays, in running order.

A step of the v1 scheduler touches every running request (up to `max_num_seqs`), so those
counters live in numpy arrays and each step is a handful of vector operations; only requests
where something *happens* (a new block, a full block to cache, a first or last token, a
preemption) are handled one by one in Python.  Slot i is position i of vLLM's `running` list:
admissions append, preemption pops the tail, finished requests are removed keeping the order.

`Request` objects stay the identity of a sequence (block table, timestamps); their counters are
written back (`writeback`) whenever a request leaves the batch and on `sync_all()`.

Batches still in flight (async scheduling: step k+1 is scheduled before step k's output is
applied) hold slot positions; `pop` and `compact` keep them valid: popped samplers become stale
requests, and compaction remaps positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.request import Request

_COLS = ("computed", "num_tokens", "output", "max_tokens", "prompt", "ph", "nblocks", "ncached")


class RunningBatch:
    """Columns of the running requests of one scheduler."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.n = 0
        self.slots: list[Request] = []
        for name in _COLS:
            setattr(self, name, np.zeros(capacity, dtype=np.int64))
        self.last_tok = np.full(capacity, -1.0)
        self.open_batches: list[Any] = []   # in-flight StepBatch objects holding slot positions

    # these attributes are created in __init__ via setattr; declared for type checkers
    computed: np.ndarray
    num_tokens: np.ndarray
    output: np.ndarray
    max_tokens: np.ndarray
    prompt: np.ndarray
    ph: np.ndarray
    nblocks: np.ndarray
    ncached: np.ndarray

    def append(self, req: Request) -> int:
        i = self.n
        if i == self.capacity:
            self._grow()
        self.computed[i] = req.num_computed
        self.num_tokens[i] = req.num_prompt_tokens + req.num_output
        self.output[i] = req.num_output
        self.max_tokens[i] = req.max_tokens
        self.prompt[i] = req.num_prompt_tokens
        self.ph[i] = 0
        self.nblocks[i] = len(req.block_ids)
        self.ncached[i] = req.num_cached_blocks
        self.last_tok[i] = req.last_token_s
        self.slots.append(req)
        self.n = i + 1
        return i

    def _grow(self) -> None:
        self.capacity *= 2
        for name in (*_COLS, "last_tok"):
            old = getattr(self, name)
            new = np.zeros(self.capacity, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    def writeback(self, i: int) -> Request:
        req = self.slots[i]
        req.num_computed = int(self.computed[i])
        req.num_output = int(self.output[i])
        req.last_token_s = float(self.last_tok[i])
        return req

    def pop(self) -> Request:
        """Remove the tail slot (a preemption victim) and return its request, written back."""
        i = self.n - 1
        req = self.writeback(i)
        self.slots.pop()
        self.n = i
        for b in self.open_batches:
            if i < b.low:
                b.low = i
            if b.sampler_mask_at(i):
                b.stale.append(req)
        return req

    def compact(self, keep: np.ndarray) -> None:
        """Drop the slots where `keep` is False, preserving order; remap in-flight batches."""
        n = self.n
        m = int(keep.sum())
        for name in (*_COLS, "last_tok"):
            a = getattr(self, name)
            a[:m] = a[:n][keep]
        self.slots = [s for s, k in zip(self.slots, keep.tolist(), strict=True) if k]
        self.n = m
        if self.open_batches:
            removed_before = np.cumsum(~keep) - (~keep)
            for b in self.open_batches:
                b.remap(keep, removed_before)

    def sync_all(self) -> None:
        for i in range(self.n):
            self.writeback(i)
