"""vLLM's `BlockHashToBlockMap` (vllm/v1/core/block_pool.py): public block hash -> the blocks
carrying it, the prefix cache's index.  Used by `sim.block_pool`, which keeps the per-block
state (ref counts, each block's hash, the free queue) and calls this map when a block is
registered under a public hash, evicted, or looked up.

An open-addressing table in one int64 array, `slots[2 s]` the hash and `slots[2 s + 1]` the
block of slot s (0, the null block, marks an empty slot), probed linearly from a Fibonacci-hashed
home slot and deleted by backward shift (no tombstones).  It holds at most one entry per block, so
a table of at least twice the blocks never fills past half and never grows.  A hash that several
blocks carry (two requests computed the same block before either registered it) keeps its first
block in the table, which `get` returns, and all of them, in registration order, in `multi`.
Compared with a dict of Python ints, a probe reads one cache line and allocates nothing: a
multi-turn run registers, looks up and evicts millions of public hashes.

Cython compiles this file like the pool (`setup_native.py`, C types in `block_hash_map.pxd`); the
pool calls its methods as C functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:                     # Cython compiles this file (setup_native.py, C types in block_hash_map.pxd)
    import cython
    COMPILED: bool = cython.compiled
except ImportError:      # no Cython at run time: plain Python
    COMPILED = False

_M64 = 0xFFFFFFFFFFFFFFFF
_FIB = 11400714819323198485     # 2**64 / golden ratio: Fibonacci hashing of a hash to its home slot


def _home(h: int, shift: int) -> int:
    """Home slot of hash `h` in a table of 2**(64 - shift) slots."""
    return (((h & _M64) * _FIB) & _M64) >> shift


def _view(a: Any) -> memoryview:
    return memoryview(a)


class BlockHashMap:
    """Public hash -> blocks, for a pool of `num_blocks` blocks (a one-slot table without caching)."""

    def __init__(self, num_blocks: int, enable_caching: bool):
        bits = max(4, (2 * num_blocks - 1).bit_length()) if enable_caching else 1
        self.shift = 64 - bits
        self.mask = (1 << bits) - 1
        self.slots = np.zeros(2 << bits, dtype=np.int64)   # (hash, block) pairs
        self.num_hashes = 0                                 # distinct hashes in the table
        self.multi: dict[int, dict[int, None]] = {}         # hash -> its blocks (several), first registered first
        self._slots = _view(self.slots)     # compiled: a typed view (the per-call helpers index it
                                            # as an attribute: a local memoryview costs an atomic
                                            # acquire and release per call)

    def get(self, h: int) -> int:
        """The block registered first under `h`, or 0 (none)."""
        return self._slots[2 * self._find(h) + 1]

    def prefetch(self, h: int) -> None:
        """Compiled: ask the CPU to bring the home slot of `h` into its cache (a hint: nothing
        read or written); plain Python: nothing."""
        if COMPILED:
            _prefetch(cython.address(self._slots[2 * _home(h, self.shift)]))  # type: ignore[name-defined]  # noqa: F821

    def add(self, h: int, block: int) -> None:
        """Register `block` under `h` (after any blocks already carrying it)."""
        s = self._find(h)
        first = self._slots[2 * s + 1]
        if first == 0:
            self._slots[2 * s] = h
            self._slots[2 * s + 1] = block
            self.num_hashes += 1
        elif h in self.multi:
            self.multi[h][int(block)] = None
        else:
            self.multi[h] = {int(first): None, int(block): None}

    def remove(self, h: int, block: int) -> None:
        """Take `block` out of the entry of `h` (it carries it)."""
        s = self._find(h)
        if self.multi and h in self.multi:
            blocks = self.multi[h]
            del blocks[block]
            self._slots[2 * s + 1] = next(iter(blocks))
            if len(blocks) == 1:
                del self.multi[h]
        else:
            self._delete_slot(s)

    def as_dict(self) -> dict[int, Any]:
        """The map as a dict (tests, invariants): hash -> block, or -> {block: None, ...} in
        registration order for a hash several blocks carry; in table order."""
        out: dict[int, Any] = {}
        for s in range(self.mask + 1):
            b = int(self._slots[2 * s + 1])
            if b:
                h = int(self._slots[2 * s])
                out[h] = dict(self.multi[h]) if h in self.multi else b
        return out

    def _find(self, h: int) -> int:
        """The slot holding hash `h`, or the empty slot that ends its probe."""
        s = _home(h, self.shift)
        while self._slots[2 * s + 1] != 0 and self._slots[2 * s] != h:
            s = (s + 1) & self.mask
        return s

    def _delete_slot(self, s: int) -> None:
        """Empty slot `s`, shifting back the entries after it whose probe passed it."""
        mask = self.mask
        i = s
        j = s
        while True:
            j = (j + 1) & mask
            if self._slots[2 * j + 1] == 0:
                break
            k = _home(self._slots[2 * j], self.shift)
            if (k - i - 1) & mask < (j - i) & mask:    # home in (i, j]: the entry stays
                continue
            self._slots[2 * i] = self._slots[2 * j]
            self._slots[2 * i + 1] = self._slots[2 * j + 1]
            i = j
        self._slots[2 * i] = 0
        self._slots[2 * i + 1] = 0
        self.num_hashes -= 1
