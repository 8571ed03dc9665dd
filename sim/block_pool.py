"""The paged KV-cache block pool: physical block ids, ref counts, the free queue, prefix hashes.

Mechanism only (policy lives in `sim.kv_cache_manager` and the schedulers).  Follows
vllm/v1/core/block_pool.py of vLLM 0.32 (`BlockPool`, `FreeKVCacheBlockQueue`,
`BlockHashToBlockMap`):

* Block 0 is the null block: never handed out, so usage is counted over `num_blocks - 1`
  blocks (`BlockPool.get_usage`).
* The free queue is ordered by eviction priority; `get_new_blocks` pops from the front.
  `free_blocks(ordered)` puts blocks without a hash at the *front* (LIFO reuse, vLLM's "GPU
  locality" choice; `ordered[0]` becomes the head) and hashed blocks at the *back* (LRU eviction
  of cached-free blocks), in the given order.
* A hashed block with ref count 0 stays in the queue as a cached-free block: a prefix hit
  `touch()`es it out; reusing it for new data evicts its hash.
* Hashes are either *public* (registered in the hash map, findable by any request: shared prompt
  content) or *private* (content unique to one sequence: only that sequence, after preemption,
  can hit it, by checking `hash_of[block]` against its own token).  vLLM registers both kinds
  in one map; keeping private ones out of the map changes no decision and saves a dict
  operation per block.

Representation, for speed (a 100k-request run allocates ~10M blocks): per-block state lives in
numpy arrays (`ref`, `hash_of`, `public`, `where`, read by the KV-cache manager and the tests),
all but `public` the fields of one record per block (`STATE`: a block's state in one cache line).  The
front of the queue is a stack (`stack[top-1]` is the head); behind it a FIFO array; removal from
the middle (a prefix hit on a cached-free block) is lazy: `where[b]` names the FIFO position of a
block's live entry.

The hash map (vLLM's `BlockHashToBlockMap`: public hash -> the blocks carrying it) is its own
module, `sim.block_hash_map` (an open-addressing table of int64 pairs); the pool holds one (`map`).

Speed: the operations are plain per-block loops over those arrays, written so that Cython can
compile this very file (`setup_native.py`; the C types are declared beside it in
`block_pool.pxd`, so this source stays plain Python and runs as it is when no compiler is at
hand).  Compiled, each loop reads and writes the arrays through typed memoryviews (`_ref`,
`_hash`, ... are the same buffers) at C speed; a decode step's block, a request's whole table
freed, cost tens of nanoseconds per block instead of a numpy call per operation.  Compiled, the
loops also prefetch (hints to the CPU, `BlockHashMap.prefetch`, `_prefetch_next`: nothing read for
a result): a prefix-cached run's hash-map slots and the state of the blocks the FIFO evicts next
are cold (a conversation's blocks were last touched hundreds of turns earlier), and a probe that
misses the cache waited ~50 ns for each; hinted a few blocks ahead, the waits overlap.

Invariants (`check_invariants`): free + in-use == num_blocks - 1; a free block has ref count 0;
every public hash in the map points at a block carrying that hash, and every public block is in it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.block_hash_map import BlockHashMap

try:                     # Cython compiles this file (setup_native.py, C types in block_pool.pxd)
    import cython
    COMPILED: bool = cython.compiled
except ImportError:      # no Cython at run time: plain Python
    COMPILED = False

ID = np.intp      # block ids
NO_HASH = 0


# A block's hash, FIFO position and ref count as one 16-byte record, its fields the pool's public
# arrays (strided views): the operations on a block read and write several of them (a free: its
# ref count, its hash, its FIFO position; an eviction: all three), and a run's blocks are touched
# in no order at all (a prefix hit, an eviction reach blocks last touched hundreds of requests
# earlier), so three arrays cost up to three cache misses where one record costs one.  (The
# public flags, a byte a block, stay an array of their own: 32-byte records holding them too made
# the records of a 28k-block pool outgrow the cache and the run slower.)
STATE = np.dtype({"names": ["hash", "where", "ref"],
                  "formats": [np.int64, np.int32, np.int32], "offsets": [0, 8, 12], "itemsize": 16})


def _block_states(n: int) -> np.ndarray:
    """`n` zeroed STATE records starting on a 64-byte boundary (none straddles a cache line)."""
    size = n * STATE.itemsize
    raw = np.zeros(size + 64, dtype=np.uint8)
    off = -raw.ctypes.data % 64
    return raw[off: off + size].view(STATE)


def _view(a: Any) -> memoryview:
    return memoryview(a)


def _chain(hashes: Sequence[int]) -> Any:
    """Hashes as an array('q') (a chain, `sim.block_hash`, as it is; a list copied): compiled,
    the loops read it through a typed view of its memory."""
    return hashes if isinstance(hashes, array) else array("q", hashes)


class BlockPool:
    """Physical KV blocks of one replica (GPU)."""

    def __init__(self, num_blocks: int, enable_caching: bool):
        if not 2 <= num_blocks < 1 << 30:      # FIFO positions are int32 (STATE)
            raise ValueError(f"a block pool needs 2 to 2**30 - 1 blocks (one is the null block), not {num_blocks}")
        n = num_blocks
        self.num_blocks = n
        self.enable_caching = enable_caching
        state = _block_states(n)                        # one 16-byte record a block (see STATE)
        self.hash_of = state["hash"]                    # NO_HASH = none
        self.public = np.zeros(n, dtype=bool)
        self.ref = state["ref"]
        self.map = BlockHashMap(n, enable_caching)      # public hash -> blocks (vLLM's BlockHashToBlockMap)
        self.stack = np.empty(n, dtype=ID)            # queue front; stack[top-1] is the head
        self.top = 0
        self.fifo = np.empty(max(2 * n, 1024), dtype=ID)
        self.fifo[: n - 1] = np.arange(1, n, dtype=ID)
        self.where = state["where"]
        self.where[0] = -1
        self.where[1:] = np.arange(0, n - 1)
        self.head = 0
        self.tail = n - 1
        self.num_stale = 0                              # dead FIFO entries between head and tail
        self.nfree = n - 1
        self.num_cached_free = 0
        self.num_evictions = 0
        self._views()

    def _views(self) -> None:
        """Views of the arrays for the per-block loops: compiled, typed memoryviews; interpreted,
        Python memoryviews (their items are Python ints, several times cheaper than numpy's)."""
        self._ref = _view(self.ref)
        self._hash = _view(self.hash_of)
        self._public = _view(self.public.view(np.uint8))
        self._stack = _view(self.stack)
        self._fifo = _view(self.fifo)
        self._where = _view(self.where)

    # --- queries -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.nfree

    @property
    def usage(self) -> float:
        """vLLM's kv_cache_usage: 1 - free / (num_blocks - 1)."""
        return 1.0 - self.nfree / (self.num_blocks - 1)

    def lookup(self, block_hash: int) -> int | None:
        """A block registered under public `block_hash` (the first registered), or None."""
        b = self.map.get(block_hash)
        return int(b) if b else None

    def hit_into(self, table: np.ndarray, hashes: Sequence[int], limit: int = -1) -> int:
        """vLLM's longest cache hit, written into the head of a block table (an intp array):
        table[i] = the block registered under public hashes[i] (a chain, `sim.block_hash`, or a
        list; the first `limit` of them, all when negative) up to the first miss (`lookup` of
        each in turn); how many.  The KV-cache manager looks a waiting request's prefix up
        straight into its (empty) table, where `adopt` takes them: no array of hits is made."""
        hv = _chain(hashes)
        tv = table
        m = len(hashes) if limit < 0 else min(limit, len(hashes))
        n = 0
        if COMPILED:
            for i in range(min(m, 4)):
                self.map.prefetch(hv[i])
        while n < m:
            if COMPILED and n + 4 < m:
                self.map.prefetch(hv[n + 4])
            b = self.map.get(hv[n])
            if b == 0:
                break
            tv[n] = b
            n += 1
        return n

    @property
    def cached(self) -> dict[int, Any]:
        """The hash map as a dict (tests, invariants): `BlockHashMap.as_dict`."""
        return self.map.as_dict()

    def free_queue(self) -> list[int]:
        """The free queue, head first (tests and debugging)."""
        live = self.fifo[self.head:self.tail]
        pos = np.arange(self.head, self.tail)
        return self.stack[: self.top][::-1].tolist() + live[self.where[live] == pos].tolist()

    # --- taking blocks -------------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> np.ndarray:
        """Pop `n` blocks from the front of the free queue (evicting their hashes)."""
        out = np.empty(n, dtype=ID)
        self.get_new_blocks_into(out, 0, n)
        return out

    def get_new_blocks_into(self, table: np.ndarray, start: int, n: int) -> None:
        """`get_new_blocks(n)` written into table[start:start + n] (a request's block table)."""
        if n > self.nfree:
            raise ValueError(f"cannot get {n} free blocks from a pool with {self.nfree} free")
        tv = table
        for i in range(start, start + n):
            tv[i] = self._pop()
        self.nfree -= n

    def pop_few(self, n: int) -> list[int]:
        """`get_new_blocks` as a list (a decode step's new blocks)."""
        if n > self.nfree:
            raise ValueError(f"cannot get {n} free blocks from a pool with {self.nfree} free")
        out: list[int] = []
        for _ in range(n):
            out.append(int(self._pop()))
        self.nfree -= n
        return out

    def _pop(self) -> int:
        """The head of the free queue, with ref count 1 and its hash evicted (nfree unchanged)."""
        if self.top:
            self.top -= 1
            b = self._stack[self.top]
        else:
            while True:
                pos = self.head
                b = self._fifo[pos]
                self.head = pos + 1
                if self._where[b] == pos:
                    break
                self.num_stale -= 1
            if COMPILED:
                self._prefetch_next(pos)
            if self._hash[b] != NO_HASH:             # a cached-free block reused: its hash goes
                if self._public[b]:
                    self.map.remove(self._hash[b], b)
                    self._public[b] = 0
                self._hash[b] = NO_HASH
                self.num_cached_free -= 1
                self.num_evictions += 1
        self._ref[b] = 1
        return b

    def _prefetch_next(self, pos: int) -> None:
        """Compiled: hints to the CPU (nothing read for results, nothing written) for the blocks
        the FIFO evicts next, cold by now: the state record of the one 8 places on, the hash-map
        slot of the one 4 places on (whose record the hint 4 pops ago brought in)."""
        far = pos + 8
        if far < self.tail:
            b = self._fifo[far]
            _prefetch(cython.address(self._hash[b]))      # type: ignore[name-defined]  # noqa: F821
        near = pos + 4
        if near < self.tail:
            b = self._fifo[near]
            if self._public[b]:
                self.map.prefetch(self._hash[b])

    def count_free(self, blocks: np.ndarray, start: int = 0, n: int = -1) -> int:
        """How many of blocks[start:start + n] (an intp array; to its end when `n` < 0) are free
        (cached-free prefix hits: ref count 0)."""
        bl = blocks
        end = bl.shape[0] if n < 0 else start + n
        ref = self._ref
        k = 0
        for i in range(start, end):
            if ref[bl[i]] == 0:
                k += 1
        return k

    def touch(self, blocks: np.ndarray) -> None:
        """A prefix hit: take cached-free blocks out of the free queue, add one reference."""
        bl = np.asarray(blocks, dtype=ID)
        for i in range(bl.shape[0]):
            self._take(bl[i])

    def _take(self, b: int) -> None:
        """One more reference to block `b`; a cached-free block leaves the free queue (lazily:
        its FIFO entry goes stale)."""
        if self._ref[b] == 0:
            self._where[b] = -1
            self.num_stale += 1
            self.nfree -= 1
            self.num_cached_free -= 1
        self._ref[b] += 1

    def adopt(self, table: np.ndarray, start: int, n: int) -> None:
        """`touch` the `n` blocks table[start:start + n] (a prefix hit `hit_into` wrote into a
        request's block table: taken where they lie, no array of them made)."""
        tv = table
        for i in range(start, start + n):
            self._take(tv[i])

    # --- returning blocks -----------------------------------------------------------------------
    def _to_front(self, b: int) -> None:
        self._stack[self.top] = b
        self.top += 1

    def _room(self, m: int) -> None:
        """Make room for `m` more FIFO entries behind the tail."""
        if self.tail + m > self.fifo.shape[0]:
            self._compact_fifo(m)

    def _to_back(self, b: int) -> None:
        t = self.tail
        self._fifo[t] = b
        self._where[b] = t
        self.tail = t + 1

    def free_blocks(self, ordered: np.ndarray) -> None:
        """Drop one reference from each block; those reaching 0 return to the free queue,
        `ordered` being their eviction priority (first = evicted first).  A request frees its
        table tail first (`free_blocks(table[::-1])`, a strided view: no copy)."""
        bl = np.asarray(ordered, dtype=ID)
        n = bl.shape[0]
        ref = self._ref
        m = 0
        z = 0
        for i in range(n):
            b = bl[i]
            ref[b] -= 1
            if ref[b] == 0:
                z += 1
                if self.enable_caching and self._hash[b] != NO_HASH:
                    m += 1
        for i in range(n - 1, -1, -1):           # unhashed: ordered[0] ends at the head
            b = bl[i]
            if ref[b] == 0 and not (self.enable_caching and self._hash[b] != NO_HASH):
                self._to_front(b)
        if m:
            self._room(m)
            for i in range(n):
                b = bl[i]
                if ref[b] == 0 and self.enable_caching and self._hash[b] != NO_HASH:
                    self._to_back(b)
            self.num_cached_free += m
        self.nfree += z

    def _compact_fifo(self, extra: int) -> None:
        w = self.fifo[self.head: self.tail]
        live = w[self.where[w] == np.arange(self.head, self.tail)]
        cap = max(self.fifo.shape[0], 2 * (live.size + extra))
        fifo = np.empty(cap, dtype=ID)
        fifo[: live.size] = live
        self.fifo = fifo
        self.where[live] = np.arange(live.size)
        self.head, self.tail, self.num_stale = 0, int(live.size), 0
        self._views()

    # --- hashes ------------------------------------------------------------------------------------
    def set_private_hashes(self, blocks: np.ndarray, start: int, key: int, fresh: bool) -> None:
        """Mark full blocks with private hashes (only their own sequence can hit them): blocks[k],
        block start + k of its table, gets -(key + start + k) unless it carries a hash already.
        `fresh`: none does (a table none of whose blocks was shared or registered)."""
        h = self._hash
        base = -(key + start)
        for k in range(blocks.shape[0]):
            b = blocks[k]
            if fresh or h[b] == NO_HASH:
                h[b] = base - k

    def cache_public(self, block: int, block_hash: int) -> None:
        """Register a full block under a public hash (vLLM `cache_full_blocks`, one block)."""
        if self._hash[block] != NO_HASH:
            return
        self._hash[block] = block_hash
        self._public[block] = 1
        self.map.add(block_hash, block)

    def cache_public_run(self, table: np.ndarray, hashes: Sequence[int], start: int, end: int) -> None:
        """`cache_public` of table[i] under hashes[i] for start <= i < end, in order (a request's
        block table and hash chain as they are: no slices made)."""
        bv = table
        hv = _chain(hashes)
        if COMPILED:
            for i in range(start, min(end, start + 4)):
                self.map.prefetch(hv[i])
        for i in range(start, end):
            if COMPILED and i + 4 < end:
                self.map.prefetch(hv[i + 4])
            self.cache_public(bv[i], hv[i])

    def check_invariants(self) -> None:
        """Raise AssertionError when the pool's bookkeeping is inconsistent."""
        q = self.free_queue()
        assert 0 not in q and self.ref[0] == 0, "null block must stay out of use"
        assert len(q) == len(set(q)) == self.nfree, "free queue holds a block twice or count drifted"
        assert all(self.ref[b] == 0 for b in q), "a free block has a nonzero ref count"
        in_use = int(np.count_nonzero(self.ref[1:] > 0))
        assert in_use + self.nfree == self.num_blocks - 1, "free + used != total"
        assert sum(1 for b in q if self.hash_of[b] != NO_HASH) == self.num_cached_free, "cached-free count drifted"
        assert all(self.hash_of[b] == NO_HASH for b in self.stack[: self.top].tolist()), "hashed block at the front"
        cached = self.cached
        assert len(cached) == self.map.num_hashes, "hash count drifted"
        assert all(len(v) > 1 and isinstance(cached.get(h), dict) for h, v in self.map.multi.items()), "multi entries drifted"
        for h, b in cached.items():
            assert self.lookup(h) == (b if isinstance(b, int) else next(iter(b))), f"hash {h} not found where it lies"
        assert sum(1 if isinstance(e, int) else len(e) for e in cached.values()) == int(np.count_nonzero(self.public)), \
            "a public block is missing from the hash map"
        for h, entry in cached.items():
            ids = [entry] if isinstance(entry, int) else list(entry)
            for b in ids:
                assert self.hash_of[b] == h and self.public[b], f"block {b} registered under a hash it does not carry"
