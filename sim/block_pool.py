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
* Hashes are either *public* (registered in `cached`, findable by any request: shared prompt
  content) or *private* (content unique to one sequence: only that sequence, after preemption,
  can hit it, by checking `hash_of[block]` against its own token).  vLLM registers both kinds
  in one map; keeping private ones out of the map changes no decision and saves a dict
  operation per block.

Representation, for speed (a 100k-request run allocates ~10M blocks): per-block state lives in
numpy arrays and every operation works on whole arrays of block ids.  The front of the queue is
a stack (`stack[top-1]` is the head); behind it a FIFO array; removal from the middle (a prefix
hit on a cached-free block) is lazy: `where[b]` names the FIFO position of a block's live entry.

Invariants (`check_invariants`): free + in-use == num_blocks - 1; a free block has ref count 0;
every public hash in the map points at a block carrying that hash.
"""

from __future__ import annotations

import numpy as np

ID = np.intp      # block ids: numpy indexes with intp arrays several times faster than with int32 ones
NO_HASH = 0


class BlockPool:
    """Physical KV blocks of one replica (GPU)."""

    def __init__(self, num_blocks: int, enable_caching: bool):
        if num_blocks < 2:
            raise ValueError("a block pool needs at least 2 blocks (one is the null block)")
        n = num_blocks
        self.num_blocks = n
        self.enable_caching = enable_caching
        self.ref = np.zeros(n, dtype=np.int32)
        self.hash_of = np.zeros(n, dtype=np.int64)     # NO_HASH = none
        self.public = np.zeros(n, dtype=bool)
        self.cached: dict[int, int | dict[int, None]] = {}
        self.stack = np.empty(n, dtype=ID)            # queue front; stack[top-1] is the head
        self.top = 0
        cap = max(2 * n, 1024)
        self.fifo = np.empty(cap, dtype=ID)
        self.pos = np.arange(cap)                       # FIFO positions (slices of it instead of aranges)
        self.fifo[: n - 1] = np.arange(1, n, dtype=ID)
        self.where = np.full(n, -1, dtype=np.int64)
        self.where[1:] = np.arange(0, n - 1)
        self.head = 0
        self.tail = n - 1
        self.num_stale = 0                              # dead FIFO entries between head and tail
        self.nfree = n - 1
        self.num_cached_free = 0
        self.num_evictions = 0
        self.multi: set[int] = set()                    # hashes whose `cached` entry names several blocks
        self.neg_index = -np.arange(1024, dtype=np.int64)   # -i for table index i (private hashes)

    # --- queries -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return self.nfree

    @property
    def usage(self) -> float:
        """vLLM's kv_cache_usage: 1 - free / (num_blocks - 1)."""
        return 1.0 - self.nfree / (self.num_blocks - 1)

    def lookup(self, block_hash: int) -> int | None:
        """A block registered under public `block_hash`, or None."""
        entry = self.cached.get(block_hash)
        if entry is None or isinstance(entry, int):
            return entry
        return next(iter(entry))

    def longest_hit(self, hashes: list[int]) -> list[int]:
        """Blocks registered under the leading public `hashes`, up to the first miss (`lookup`
        of each in turn, with the dict lookups done in one pass at C speed)."""
        if not hashes:
            return []
        vals = list(map(self.cached.get, hashes))
        if None in vals:
            del vals[vals.index(None):]
        if self.multi and not self.multi.isdisjoint(hashes):
            return [v if isinstance(v, int) else next(iter(v)) for v in vals]  # type: ignore[arg-type, misc]
        return vals  # type: ignore[return-value]

    def free_queue(self) -> list[int]:
        """The free queue, head first (tests and debugging)."""
        live = self.fifo[self.head:self.tail]
        pos = np.arange(self.head, self.tail)
        return self.stack[: self.top][::-1].tolist() + live[self.where[live] == pos].tolist()

    # --- state changes -----------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> np.ndarray:
        """Pop `n` blocks from the front of the free queue (evicting their hashes)."""
        if n > self.nfree:
            raise ValueError(f"cannot get {n} free blocks from a pool with {self.nfree} free")
        top = self.top
        if n <= top:                                     # all from the LIFO front: never hashed
            out = self.stack[top - n: top][::-1].copy()
            self.top = top - n
        else:
            head = self.head
            rem = n - top
            if self.num_stale:
                taken = self._pop_fifo_skipping_stale(rem)
            else:
                taken = self.fifo[head: head + rem].copy()
                self.head = head + rem
            if self.num_cached_free:
                self._evict(taken)
            if top:
                out = np.concatenate((self.stack[:top][::-1], taken))
                self.top = 0
            else:
                out = taken
        self.ref[out] = 1
        self.nfree -= n
        return out

    def pop_few(self, n: int) -> list[int]:
        """`get_new_blocks` for a handful of blocks (a decode step's new blocks), with scalar
        operations: cheaper than vector ones below about ten blocks.  Same order, same effects."""
        if n > self.nfree:
            raise ValueError(f"cannot get {n} free blocks from a pool with {self.nfree} free")
        out: list[int] = []
        stack, fifo, where, ref, hash_of = self.stack, self.fifo, self.where, self.ref, self.hash_of
        for _ in range(n):                      # (.item(i): a Python int at half the cost of int(a[i]))
            if self.top:
                self.top -= 1
                b = stack.item(self.top)
            else:
                while True:
                    pos = self.head
                    b = fifo.item(pos)
                    self.head = pos + 1
                    if not self.num_stale or where.item(b) == pos:
                        break
                    self.num_stale -= 1
                if self.num_cached_free and hash_of.item(b):
                    if self.public.item(b):
                        self._evict_one(b)
                    else:
                        hash_of[b] = NO_HASH
                        self.num_cached_free -= 1
                        self.num_evictions += 1
            ref[b] = 1
            out.append(b)
        self.nfree -= n
        return out

    def _pop_fifo_skipping_stale(self, rem: int) -> np.ndarray:
        """The first `rem` live FIFO entries from the head, skipping stale ones (head ends just
        past the last one taken).  A window of `rem` + a few stale entries is read at a time."""
        parts = []
        while rem:
            h = self.head
            span = min(rem + min(self.num_stale, rem + 64), self.tail - h)
            w = self.fifo[h: h + span]
            idx = (self.where[w] == self.pos[h: h + span]).nonzero()[0]   # (flatnonzero: a slow wrapper)
            if idx.size >= rem:
                end = int(idx[rem - 1]) + 1
                parts.append(w[idx[:rem]])
                self.num_stale -= end - rem
                self.head = h + end
                break
            parts.append(w[idx])
            self.num_stale -= span - int(idx.size)
            self.head = h + span
            rem -= int(idx.size)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _evict(self, taken: np.ndarray) -> None:
        """Blocks leaving the free queue for new data lose their hashes (cached-free -> gone)."""
        h = self.hash_of[taken]
        k = int(np.count_nonzero(h))
        if not k:
            return
        if self.cached:
            pm = self.public[taken]
            hs = h[pm].tolist()
            if hs:
                if self.multi and not self.multi.isdisjoint(hs):
                    for b, bh in zip(taken[pm].tolist(), hs, strict=True):
                        self._unregister(b, bh)
                else:                       # every entry names one block: just drop them
                    cached = self.cached
                    for bh in hs:
                        del cached[bh]
                self.public[taken] = False
        self.hash_of[taken] = NO_HASH
        self.num_cached_free -= k
        self.num_evictions += k

    def _evict_one(self, b: int) -> None:
        """`_evict` for one public block, with scalar operations (a decode step's new block)."""
        self._unregister(b, int(self.hash_of[b]))
        self.public[b] = False
        self.hash_of[b] = NO_HASH
        self.num_cached_free -= 1
        self.num_evictions += 1

    def _unregister(self, b: int, bh: int) -> None:
        """Take block `b` out of the hash map entry `bh`."""
        entry = self.cached.pop(bh)
        if isinstance(entry, dict):
            del entry[b]
            if len(entry) > 1:
                self.cached[bh] = entry
            else:
                self.cached[bh] = next(iter(entry))
                self.multi.discard(bh)

    def touch(self, blocks: np.ndarray) -> None:
        """A prefix hit: take cached-free blocks out of the free queue, add one reference."""
        r = self.ref[blocks]
        freed = blocks[r == 0]
        if freed.size:
            self.where[freed] = -1
            self.num_stale += int(freed.size)
            self.nfree -= int(freed.size)
            self.num_cached_free -= int(freed.size)
        r += 1
        self.ref[blocks] = r

    def free_unshared(self, table: np.ndarray, num_hashed: int) -> None:
        """Free a request's whole table when no block of it is shared (every ref count is 1):
        its first `num_hashed` blocks carry hashes.  Same queue order as
        `free_blocks(table[::-1])`: unhashed tail blocks to the front, hashed blocks to the back
        tail first."""
        n = table.size
        self.ref[table] = 0
        if num_hashed < n:
            front = table[num_hashed:]          # reversed twice: the head is the last block
            k = n - num_hashed
            self.stack[self.top: self.top + k] = front
            self.top += k
        if num_hashed:
            back = table[:num_hashed][::-1]
            if self.tail + num_hashed > self.fifo.shape[0]:
                self._compact_fifo(num_hashed)
            t = self.tail
            self.fifo[t: t + num_hashed] = back
            self.where[back] = self.pos[t: t + num_hashed]
            self.tail = t + num_hashed
            self.num_cached_free += num_hashed
        self.nfree += n

    def free_table(self, table: np.ndarray, num_hashed: int) -> None:
        """`free_blocks(table[::-1])` for a request's table whose first `num_hashed` blocks carry
        hashes (and may be shared) and whose other blocks are its own, unhashed: those go to the
        front, the hashed ones reaching ref count 0 to the back, tail first."""
        n = table.size
        if num_hashed < n:
            front = table[num_hashed:]
            k = n - num_hashed
            self.ref[front] = 0
            self.stack[self.top: self.top + k] = front
            self.top += k
        nz = n - num_hashed
        if num_hashed:
            head = table[:num_hashed]
            r = self.ref[head]
            r -= 1
            self.ref[head] = r
            back = head[r == 0][::-1]
            m = int(back.size)
            if m:
                if self.tail + m > self.fifo.shape[0]:
                    self._compact_fifo(m)
                t = self.tail
                self.fifo[t: t + m] = back
                self.where[back] = self.pos[t: t + m]
                self.tail = t + m
                self.num_cached_free += m
                nz += m
        self.nfree += nz

    def free_blocks(self, ordered: np.ndarray) -> None:
        """Drop one reference from each block; those reaching 0 return to the free queue,
        `ordered` being their eviction priority (first = evicted first)."""
        ref = self.ref
        ref[ordered] -= 1
        z = ordered[ref[ordered] == 0]
        if not z.size:
            return
        if self.enable_caching:
            hashed = self.hash_of[z] != NO_HASH
            front = z[~hashed]
            back = z[hashed]
        else:
            front, back = z, z[:0]
        if front.size:
            self.stack[self.top: self.top + front.size] = front[::-1]
            self.top += int(front.size)
        if back.size:
            if self.tail + back.size > self.fifo.shape[0]:
                self._compact_fifo(int(back.size))
            self.fifo[self.tail: self.tail + back.size] = back
            self.where[back] = self.pos[self.tail: self.tail + back.size]
            self.tail += int(back.size)
            self.num_cached_free += int(back.size)
        self.nfree += int(z.size)

    def _compact_fifo(self, extra: int) -> None:
        w = self.fifo[self.head: self.tail]
        live = w[self.where[w] == np.arange(self.head, self.tail)]
        cap = max(self.fifo.shape[0], 2 * (live.size + extra))
        fifo = np.empty(cap, dtype=ID)
        fifo[: live.size] = live
        self.fifo = fifo
        if cap > self.pos.shape[0]:
            self.pos = np.arange(cap)
        self.where[live] = np.arange(live.size)
        self.head, self.tail, self.num_stale = 0, int(live.size), 0

    def set_private_hashes(self, blocks: np.ndarray, start: int, key: int, fresh: bool) -> None:
        """Mark full blocks with private hashes (only their own sequence can hit them): blocks[k],
        block start + k of its table, gets -(key + start + k) unless it carries a hash already.
        `fresh`: none does (a table none of whose blocks was shared or registered)."""
        end = start + blocks.size
        neg = self.neg_index
        if end > neg.size:
            neg = self.neg_index = -np.arange(2 * end, dtype=np.int64)
        tokens = neg[start:end] - key
        if not fresh:
            unhashed = self.hash_of[blocks] == NO_HASH
            if np.count_nonzero(unhashed) < unhashed.size:
                blocks, tokens = blocks[unhashed], tokens[unhashed]
        self.hash_of[blocks] = tokens

    def cache_public(self, block: int, block_hash: int) -> None:
        """Register a full block under a public hash (vLLM `cache_full_blocks`, one block)."""
        if self.hash_of[block] != NO_HASH:
            return
        self.hash_of[block] = block_hash
        self.public[block] = True
        entry = self.cached.get(block_hash)
        if entry is None:
            self.cached[block_hash] = block
        elif isinstance(entry, int):
            self.cached[block_hash] = {entry: None, block: None}
            self.multi.add(block_hash)
        else:
            entry[block] = None

    def cache_public_run(self, blocks: np.ndarray, hashes: list[int]) -> None:
        """`cache_public` of blocks[i] under hashes[i] for each i, in order; in bulk when no
        block carries a hash yet and no hash is registered yet (the common case)."""
        if len(hashes) > 2 and not np.count_nonzero(self.hash_of[blocks]) and self.cached.keys().isdisjoint(hashes):
            self.hash_of[blocks] = hashes
            self.public[blocks] = True
            self.cached.update(zip(hashes, blocks.tolist(), strict=True))
            return
        for b, h in zip(blocks.tolist(), hashes, strict=True):
            self.cache_public(b, h)

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
        assert {h for h, e in self.cached.items() if isinstance(e, dict)} == self.multi, "multi-entry set drifted"
        for h, entry in self.cached.items():
            ids = [entry] if isinstance(entry, int) else list(entry)
            for b in ids:
                assert self.hash_of[b] == h and self.public[b], f"block {b} registered under a hash it does not carry"
