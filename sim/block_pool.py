"""The paged KV-cache block pool: physical block ids, ref counts, the free queue, prefix hashes.

Mechanism only (policy lives in `sim.kv_cache_manager` and the schedulers).  Follows
vllm/v1/core/block_pool.py of vLLM 0.32 (`BlockPool`, `BlockHashToBlockMap`):

* Block 0 is the null block: taken out of the free queue at start and never handed out, so
  usage is counted over `num_blocks - 1` blocks (`BlockPool.get_usage`).
* The free queue is ordered by eviction priority: `get_new_blocks` pops from the front.
  `free_blocks(ordered)` puts blocks that carry no hash at the *front* (LIFO reuse, vLLM's "GPU
  locality" choice) and hashed blocks at the *back* (LRU eviction of cached-free blocks).
* A hashed block with ref count 0 stays in the free queue as a cached-free block: a prefix hit
  `touch()`es it out of the queue; allocation evicts its hash when it is reused.
* The hash map keeps every block registered under a hash (no de-duplication); a lookup returns
  the first one registered.

Invariants (`check_invariants`): free + in-use == num_blocks - 1; a block in the free queue has
ref count 0; ref counts equal the number of owners (checked by the manager); every hash in the map
points at a block whose `hash_of` is that hash.
"""

from __future__ import annotations

from collections import OrderedDict


class BlockPool:
    """Physical KV blocks of one replica (GPU)."""

    def __init__(self, num_blocks: int, enable_caching: bool):
        if num_blocks < 2:
            raise ValueError("a block pool needs at least 2 blocks (one is the null block)")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_cnt = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        # Free queue in eviction order; the value is unused (OrderedDict gives O(1) pops at
        # both ends, O(1) removal from the middle and O(1) prepend via move_to_end).
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self.cached: dict[int, int | dict[int, None]] = {}   # hash -> block id (or ids, in insert order)
        self.num_cached_free = 0          # hashed blocks with ref count 0 (cached-free)
        self.num_evictions = 0

    # --- queries -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def usage(self) -> float:
        """vLLM's kv_cache_usage: 1 - free / (num_blocks - 1)."""
        return 1.0 - len(self.free) / (self.num_blocks - 1)

    def lookup(self, block_hash: int) -> int | None:
        """A block registered under `block_hash`, or None."""
        entry = self.cached.get(block_hash)
        if entry is None or isinstance(entry, int):
            return entry
        return next(iter(entry))

    # --- state changes -----------------------------------------------------------------------
    def get_new_blocks(self, n: int) -> list[int]:
        """Pop `n` blocks from the front of the free queue, evicting their hashes."""
        if n > len(self.free):
            raise ValueError(f"cannot get {n} free blocks from a pool with {len(self.free)} free")
        popitem = self.free.popitem
        out = [popitem(last=False)[0] for _ in range(n)]
        ref = self.ref_cnt
        hash_of = self.hash_of
        for b in out:
            if hash_of[b] is not None:
                self._evict(b)
            ref[b] = 1
        return out

    def touch(self, blocks: list[int]) -> None:
        """A prefix hit: take cached-free blocks out of the free queue, add one reference."""
        ref = self.ref_cnt
        for b in blocks:
            if ref[b] == 0:
                del self.free[b]
                self.num_cached_free -= 1
            ref[b] += 1

    def free_blocks(self, ordered: list[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 return to the free queue,
        `ordered` being their eviction priority (first = evicted first)."""
        ref = self.ref_cnt
        hash_of = self.hash_of
        front: list[int] = []
        back: list[int] = []
        for b in ordered:
            ref[b] -= 1
            if ref[b] == 0:
                if hash_of[b] is None or not self.enable_caching:
                    front.append(b)
                else:
                    back.append(b)
        free = self.free
        for b in reversed(front):
            free[b] = None
            free.move_to_end(b, last=False)
        for b in back:
            free[b] = None
        self.num_cached_free += len(back)

    def cache_block(self, block: int, block_hash: int) -> None:
        """Register a full block under its hash (vLLM `cache_full_blocks` for one block)."""
        if self.hash_of[block] is not None:
            return
        self.hash_of[block] = block_hash
        entry = self.cached.get(block_hash)
        if entry is None:
            self.cached[block_hash] = block
        elif isinstance(entry, int):
            self.cached[block_hash] = {entry: None, block: None}
        else:
            entry[block] = None

    def _evict(self, block: int) -> None:
        h = self.hash_of[block]
        self.hash_of[block] = None
        self.num_cached_free -= 1
        self.num_evictions += 1
        entry = self.cached.pop(h)  # type: ignore[arg-type]
        if isinstance(entry, dict):
            del entry[block]
            if entry:
                self.cached[h] = entry if len(entry) > 1 else next(iter(entry))  # type: ignore[index]

    def check_invariants(self) -> None:
        """Raise AssertionError when the pool's bookkeeping is inconsistent."""
        assert self.ref_cnt[0] == 0 and 0 not in self.free, "null block must stay out of use"
        for b in self.free:
            assert self.ref_cnt[b] == 0, f"free block {b} has ref count {self.ref_cnt[b]}"
        in_use = sum(1 for b in range(1, self.num_blocks) if self.ref_cnt[b] > 0)
        assert in_use + len(self.free) == self.num_blocks - 1, "free + used != total"
        cached_free = sum(1 for b in self.free if self.hash_of[b] is not None)
        assert cached_free == self.num_cached_free, "cached-free count drifted"
        for h, entry in self.cached.items():
            ids = [entry] if isinstance(entry, int) else list(entry)
            for b in ids:
                assert self.hash_of[b] == h, f"block {b} registered under a hash it does not carry"
