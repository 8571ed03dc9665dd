"""The LRU tier (sim.lru_tier): hand-worked recency order, and runs of keys (a prompt's own
blocks as one entry) against a textbook OrderedDict LRU."""

from __future__ import annotations

import random
from collections import OrderedDict

from sim.lru_tier import LRUTier, own_key_base


def test_lru_tier_evicts_the_least_recently_used_key():
    t = LRUTier(3)
    assert [t.insert(k) for k in (1, 2, 3)] == [None, None, None]
    t.touch(1)                          # recency, oldest first: 2 3 1
    assert t.insert(4) == 2             # 3 1 4
    assert t.insert(5) == 3             # 1 4 5
    assert list(t) == [1, 4, 5]
    assert LRUTier(0).insert(7) == 7    # a tier of size 0 holds nothing


def test_runs_behave_as_one_key_per_block_against_an_ordered_dict():
    """LRUTier with runs (a prompt's own blocks as one entry) against the textbook LRU, an
    OrderedDict of keys, under random inserts of runs and single keys, refreshes and removals of
    keys inside runs (holes at either end and in the middle), and evictions."""
    rng = random.Random(7)
    for trial in range(60):
        cap = rng.randint(1, 40)
        tier, ref = LRUTier(cap), OrderedDict()
        next_ck = 1

        def evict_ref(n: int, ref: OrderedDict = ref) -> list[int]:
            return [ref.popitem(last=False)[0] for _ in range(n)]

        for _ in range(200):
            op = rng.random()
            if op < 0.3:                                   # a prompt's own blocks, a fresh run
                base, lo = own_key_base(next_ck), rng.randint(0, 3)
                hi = lo + rng.randint(0, 12)
                next_ck += 1
                tier.insert_run(base, lo, hi)
                for i in range(lo, hi):
                    ref[base - i] = None
                evict_ref(max(len(ref) - cap, 0))
            elif op < 0.45:                                # single keys (shared hashes: positive)
                keys = [k for k in (rng.randint(1, 10**6) for _ in range(rng.randint(1, 4))) if k not in ref]
                for k in dict.fromkeys(keys):
                    got = tier.insert(k)
                    ref[k] = None
                    assert [got] == (evict_ref(1) if len(ref) > cap else [None])
            elif op < 0.75 and ref:                        # a refresh (a load, a re-store)
                k = rng.choice(list(ref))
                tier.touch(k)
                ref.move_to_end(k)
            elif op < 0.85 and ref:                        # a removal
                k = rng.choice(list(ref))
                tier.remove(k)
                del ref[k]
            elif op < 0.95 and ref:                        # one more single key, one eviction back
                k = rng.randint(10**6 + 1, 10**7)
                if k not in ref:
                    got1 = tier.insert(k)
                    ref[k] = None
                    assert [got1] == (evict_ref(1) if len(ref) > cap else [None])
            probe = rng.choice(list(ref)) if ref else 5
            assert (probe in tier) == (probe in ref)
            assert (own_key_base(next_ck - 1) - 50 in tier) is False
            assert len(tier) == len(ref) and list(tier) == list(ref), trial
