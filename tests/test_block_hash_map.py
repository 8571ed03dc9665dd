"""The prefix cache's hash -> blocks map on its own, against a dict model: hashes piled onto a
few home slots (probes that collide and wrap past the table's end), duplicates (several blocks
under one hash, the first registered found) and removals in any order (backward-shift
deletion must leave every other entry findable)."""

from __future__ import annotations

import numpy as np

from sim.block_hash_map import BlockHashMap


def _home(h: int, bits: int) -> int:
    """The documented home slot: Fibonacci hashing of the hash to a table of 2**bits slots."""
    m = (1 << 64) - 1
    return (((h & m) * 11400714819323198485) & m) >> (64 - bits)


def test_map_agrees_with_a_dict_through_collisions_duplicates_and_removals() -> None:
    hm = BlockHashMap(20, enable_caching=True)
    bits = hm.mask.bit_length()
    assert bits == 6 and hm.slots.size == 2 * 64          # at least twice the blocks: never half full
    crowded: list[int] = []                               # hashes homed on slots 0 and 63 (wrap-around)
    h = 1
    while len(crowded) < 16:
        if _home(h, bits) in (0, 63):
            crowded.append(h)
        h += 1
    hashes = crowded + [-(1 << 63), (1 << 63) - 1, -5]
    rng = np.random.default_rng(5)
    model: dict[int, list[int]] = {}                      # hash -> blocks, first registered first
    holder: dict[int, int] = {}                           # block -> its hash
    saw_multi = 0
    for _ in range(3000):
        free = [b for b in range(1, 20) if b not in holder]
        if free and (rng.random() < 0.55 or not holder):
            b = int(rng.choice(free))
            hh = hashes[int(rng.integers(len(hashes)))]
            hm.add(hh, b)
            model.setdefault(hh, []).append(b)
            holder[b] = hh
        else:
            b = int(rng.choice(list(holder)))
            hh = holder.pop(b)
            hm.remove(hh, b)
            model[hh].remove(b)
        for hh in hashes:
            assert hm.get(hh) == (model[hh][0] if model.get(hh) else 0)
        expect = {k: (v[0] if len(v) == 1 else dict.fromkeys(v)) for k, v in model.items() if v}
        assert hm.as_dict() == expect and hm.num_hashes == len(expect)
        saw_multi += bool(hm.multi)
    assert saw_multi > 100


def test_without_caching_the_table_is_minimal() -> None:
    hm = BlockHashMap(1000, enable_caching=False)
    assert hm.slots.size == 4 and hm.get(12345) == 0 and hm.as_dict() == {}
