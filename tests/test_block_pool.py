"""Block pool: hand-worked walkthroughs of vLLM 0.32's free-queue order, and a Hypothesis
state machine for its invariants (no block owned twice, free + used = total, ref counts =
owners, free blocks have ref count 0)."""

from __future__ import annotations

from array import array

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.block_pool import BlockPool


def test_null_block_and_initial_order():
    pool = BlockPool(6, enable_caching=True)
    assert pool.num_free_blocks == 5          # block 0 is the null block
    assert pool.get_new_blocks(3).tolist() == [1, 2, 3]
    assert pool.usage == 3 / 5


def test_free_puts_unhashed_blocks_first_and_hashed_blocks_last():
    pool = BlockPool(8, enable_caching=True)
    a = pool.get_new_blocks(3)                # [1, 2, 3]
    pool.cache_public(1, 111)                 # a full, hashed prefix block
    pool.free_blocks(a[::-1])                 # tail first: 3, 2 (unhashed) then 1 (hashed)
    # unhashed go to the front in the given order, hashed to the back: LIFO reuse / LRU eviction
    assert pool.free_queue() == [3, 2, 4, 5, 6, 7, 1]
    assert pool.num_cached_free == 1
    assert pool.lookup(111) == 1


def test_touch_revives_cached_free_block_and_allocation_evicts_hash():
    pool = BlockPool(4, enable_caching=True)
    blk = pool.get_new_blocks(1)
    b = int(blk[0])
    pool.cache_public(b, 42)
    pool.free_blocks(blk)
    other = pool.get_new_blocks(1)            # held: ref count 1
    assert pool.count_free(np.array([b, int(other[0])], dtype=np.intp)) == 1
    pool.free_blocks(other)
    pool.touch(blk)                           # prefix hit: out of the free queue
    assert pool.count_free(blk) == 0
    assert b not in pool.free_queue() and pool.ref[b] == 1 and pool.num_cached_free == 0
    pool.free_blocks(blk)
    got = pool.get_new_blocks(3)              # 2, 3 then the cached block 1 is evicted
    assert got.tolist() == [2, 3, 1]
    assert pool.lookup(42) is None and pool.num_evictions == 1


def test_duplicate_hashes_are_kept_and_first_registered_wins():
    pool = BlockPool(5, enable_caching=True)
    x, y = pool.get_new_blocks(2).tolist()
    pool.cache_public(x, 7)
    pool.cache_public(y, 7)
    assert pool.lookup(7) == x
    pool.free_blocks(np.array([x]))
    pool.get_new_blocks(3)                    # 3, 4 then x evicted
    assert pool.lookup(7) == y
    pool.check_invariants()


def test_without_caching_every_freed_block_goes_to_the_front():
    pool = BlockPool(6, enable_caching=False)
    a = pool.get_new_blocks(2)
    pool.free_blocks(a[::-1])
    assert pool.free_queue()[:2] == [2, 1]


class PoolMachine(RuleBasedStateMachine):
    """Random allocate / share / free / cache sequences keep the pool consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = BlockPool(24, enable_caching=True)
        self.owners: list[list[int]] = []      # each owner's block list
        self.next_hash = 1

    @rule(n=st.integers(1, 5))
    def allocate(self, n: int) -> None:
        if n <= self.pool.num_free_blocks:
            self.owners.append(self.pool.get_new_blocks(n).tolist())

    @precondition(lambda self: self.owners)
    @rule(i=st.integers(0, 100))
    def free_owner(self, i: int) -> None:
        blocks = self.owners.pop(i % len(self.owners))
        self.pool.free_blocks(np.asarray(blocks[::-1], dtype=np.int32))

    @precondition(lambda self: self.owners)
    @rule(i=st.integers(0, 100))
    def cache_first_block(self, i: int) -> None:
        blocks = self.owners[i % len(self.owners)]
        self.pool.cache_public(blocks[0], self.next_hash)
        self.next_hash += 1

    @precondition(lambda self: self.pool.cached)
    @rule(h=st.integers(0, 1000))
    def share_cached(self, h: int) -> None:
        keys = list(self.pool.cached)
        b = self.pool.lookup(keys[h % len(keys)])
        assert b is not None
        self.pool.touch(np.array([b], dtype=np.int32))
        self.owners.append([b])

    @invariant()
    def consistent(self) -> None:
        self.pool.check_invariants()
        counts = [0] * self.pool.num_blocks
        for blocks in self.owners:
            for b in blocks:
                counts[b] += 1
        assert counts == self.pool.ref.tolist()
        assert all(self.pool.ref[b] == 0 for b in self.pool.free_queue())


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def _pool_state(pool: BlockPool) -> tuple[object, ...]:
    entries = {h: ([e] if isinstance(e, int) else list(e)) for h, e in pool.cached.items()}
    return (pool.free_queue(), pool.ref.tolist(), pool.hash_of.tolist(), pool.public.tolist(), entries,
            pool.nfree, pool.num_cached_free, pool.num_evictions)


def test_bulk_request_operations_match_block_by_block_reference():
    """The per-request bulk paths (`hit_into` a table's head and `cache_public_run`
    over a chain array or a list, `count_free` and `adopt` of the hits where they lie in a block
    table, freeing a table through a reversed strided view, stale-skipping `get_new_blocks`, also
    into a table) against vLLM's block-by-block operations (`lookup`
    until the first miss, `touch`, `cache_public` per block, `free_blocks` of a reversed list) on
    two pools driven alike: same hits,
    same blocks handed out, same free queue, hash map (duplicates included), ref counts, counters."""
    rng = np.random.default_rng(7)
    bulk, ref = BlockPool(40, enable_caching=True), BlockPool(40, enable_caching=True)
    live: list[tuple[list[int], int]] = []           # (table, number of hashed leading blocks)
    for _ in range(600):
        if live and (rng.random() < 0.45 or bulk.nfree < 12):
            table, _ = live.pop(int(rng.integers(len(live))))
            bulk.free_blocks(np.asarray(table, dtype=np.intp)[::-1])
            ref.free_blocks(np.asarray(table[::-1], dtype=np.intp))
        else:
            chain = [int(rng.integers(4)) * 1000 + i + 1 for i in range(int(rng.integers(1, 8)))]
            given = array("q", chain) if rng.random() < 0.5 else chain   # a chain (sim.block_hash) or a list
            limit = int(rng.integers(-1, len(chain) + 1))      # all (-1), or the first `limit`
            expect: list[int] = []
            for h in chain if limit < 0 else chain[:limit]:
                b = ref.lookup(h)
                if b is None:
                    break
                expect.append(b)
            into = np.full(len(chain) + 1, -1, dtype=np.intp)     # the hits, into a table's head
            assert bulk.hit_into(into, given, limit) == len(expect)
            assert into.tolist() == expect + [-1] * (len(chain) + 1 - len(expect))   # nothing past them
            hits = expect
            hits = hits[: int(rng.integers(len(hits) + 1))]  # sometimes recompute cached blocks: duplicates
            adopted = np.full(len(hits) + 2, -1, dtype=np.intp)
            adopted[1: 1 + len(hits)] = hits
            assert bulk.count_free(adopted, 1, len(hits)) == sum(1 for b in hits if ref.ref[b] == 0)
            if hits:
                bulk.adopt(adopted, 1, len(hits))
                ref.touch(np.asarray(hits, dtype=np.intp))
            assert adopted.tolist() == [-1, *hits, -1]          # taken where they lie
            n_new = int(rng.integers(0, 6))
            if rng.random() < 0.5:
                new = bulk.get_new_blocks(n_new).tolist()
            else:                                           # straight into a table, past a head
                t = np.full(n_new + 3, -1, dtype=np.intp)
                bulk.get_new_blocks_into(t, 2, n_new)
                assert t[:2].tolist() == [-1, -1] and t[-1] == -1
                new = t[2: 2 + n_new].tolist()
            assert new == ref.get_new_blocks(n_new).tolist()
            table = hits + new
            nh = len(hits) + min(len(chain) - len(hits), int(rng.integers(0, n_new + 1)))
            bulk.cache_public_run(np.asarray(table, dtype=np.intp), given, len(hits), nh)
            for b, h in zip(table[len(hits): nh], chain[len(hits): nh], strict=True):
                ref.cache_public(b, h)
            live.append((table, nh))
        assert _pool_state(bulk) == _pool_state(ref)
        bulk.check_invariants()
    assert bulk.map.multi and bulk.num_evictions > 0        # the walk did reach duplicates and evictions


def _home_slot(h: int, table_bits: int) -> int:
    """The map's documented home slot: Fibonacci hashing of the hash (block_hash_map docstring)."""
    m = (1 << 64) - 1
    return (((h & m) * 11400714819323198485) & m) >> (64 - table_bits)


def test_hash_map_matches_a_dict_through_collisions_wraparound_and_deletions():
    """The open-addressing hash map against a plain model (hash -> its blocks in registration
    order): hashes chosen to pile onto a few home slots, including the last one (probes wrap to
    slot 0), registered, looked up, duplicated and evicted in random order; after every operation
    `lookup` of every hash ever used, `hit_into`, `cached` and the invariants agree with it."""
    rng = np.random.default_rng(11)
    pool = BlockPool(14, enable_caching=True)           # 13 usable blocks
    bits = pool.map.mask.bit_length()
    assert bits == 5                                    # 32 slots for 14 blocks
    by_home: dict[int, list[int]] = {}
    h = 1
    while sum(len(v) for k, v in by_home.items() if k in (0, 9, 31)) < 30:
        by_home.setdefault(_home_slot(h, bits), []).append(h)
        h += 1
    hashes = by_home[0][:10] + by_home[9][:10] + by_home[31][:10] + [-(1 << 63), (1 << 63) - 1, -5]
    model: dict[int, list[int]] = {}                    # hash -> blocks carrying it, first registered first
    hash_of: dict[int, int] = {}                        # block -> its public hash
    owned: list[list[int]] = []
    saw_multi = 0
    for _ in range(4000):
        op = rng.random()
        if op < 0.35 and pool.num_free_blocks:          # take blocks: cached-free ones lose their hash
            got = pool.get_new_blocks(int(rng.integers(1, min(3, pool.num_free_blocks) + 1))).tolist()
            for b in got:
                old = hash_of.pop(b, None)
                if old is not None:
                    model[old].remove(b)
            owned.append(got)
        elif op < 0.65 and owned:                       # register an owned, unhashed block
            blocks = owned[int(rng.integers(len(owned)))]
            b = blocks[int(rng.integers(len(blocks)))]
            hh = hashes[int(rng.integers(len(hashes)))]
            if b not in hash_of:
                hash_of[b] = hh
                model.setdefault(hh, []).append(b)
            pool.cache_public(b, hh)                    # a second registration of a hashed block is a no-op
        elif owned:                                     # free an owner's blocks: hashed ones stay cached
            pool.free_blocks(np.asarray(owned.pop(int(rng.integers(len(owned))))[::-1], dtype=np.intp))
        for hh in hashes:
            assert pool.lookup(hh) == (model[hh][0] if model.get(hh) else None)
        chain = [hashes[int(i)] for i in rng.integers(len(hashes), size=4)]
        expect = []
        for hh in chain:
            if not model.get(hh):
                break
            expect.append(model[hh][0])
        into = np.zeros(len(chain), dtype=np.intp)
        assert pool.hit_into(into, chain) == len(expect) and into[: len(expect)].tolist() == expect
        assert pool.cached == {k: (v[0] if len(v) == 1 else dict.fromkeys(v)) for k, v in model.items() if v}
        pool.check_invariants()
        saw_multi += bool(pool.map.multi)
    assert pool.num_evictions > 100 and saw_multi > 100


def test_a_blocks_state_is_one_record_on_a_cache_line() -> None:
    """Hash, FIFO position and ref count of a block lie in one 16-byte record (the public arrays
    are strided views of the records), the records from a 64-byte boundary: one cache line."""
    pool = BlockPool(1000, True)
    assert pool.hash_of.strides == pool.where.strides == pool.ref.strides == (16,)
    assert pool.hash_of.ctypes.data % 64 == 0
    assert pool.where.ctypes.data - pool.hash_of.ctypes.data == 8 and pool.ref.ctypes.data - pool.hash_of.ctypes.data == 12
    pool.get_new_blocks(3)
    assert pool.ref[1:4].tolist() == [1, 1, 1] and pool.where[1:4].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="2 to 2\\*\\*30"):
        BlockPool(1, True)

