"""An LRU set of block keys with a capacity in blocks: the tiers of `sim.kv_offload`.

Keys are block hashes, and for content unique to one prompt `own_key_base(content_key) - i`
(block i), which the tier can hold as one run per prompt (`insert_run`).  Pure data structure.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

RUN_BITS = 20        # a prompt's own block i has the key own_key_base(content_key) - i, i < 2**RUN_BITS
RUN_MASK = (1 << RUN_BITS) - 1


def own_key_base(content_key: int) -> int:
    """Offload keys of content unique to one prompt (and its parallel-sampling siblings): block i
    is `own_key_base(content_key) - i`, made without hashing, distinct per (content, block) below
    2**20 blocks and negative, so the key says which run it belongs to."""
    return -((content_key << RUN_BITS) + 1)


class _Run:
    """Keys base - i for lo <= i < hi, oldest first, inserted together; those in `holes` have
    left the run (refreshed or removed).  `count` keys are held."""

    __slots__ = ("base", "lo", "hi", "count", "holes")

    def __init__(self, base: int, lo: int, hi: int):
        self.base = base
        self.lo = lo
        self.hi = hi
        self.count = hi - lo
        self.holes: set[int] | None = None


class LRUTier:
    """A set of block keys with a capacity in blocks, evicting the least recently used key.

    Speed (a 100k-request run stores ~7M blocks): the set `live` holds single keys; `fifo[head:]`
    lists the entries oldest first: a single key, where a refreshed or removed key leaves a dead
    older occurrence behind (counted in `stale`, skipped when met), or a run (`_Run`): a prompt's
    own blocks stored at once, held as one entry (`insert_run`) — one operation per prompt
    instead of one per block.  A run key that is refreshed leaves its run (a hole) and becomes
    a single key; eviction takes a run's keys from its oldest end.  The order of keys is exactly
    that of one key per entry."""

    def __init__(self, capacity_blocks: int):
        self.capacity_blocks = capacity_blocks
        self.live: set[int] = set()
        self.fifo: list[Any] = []           # int (a single key's occurrence) or _Run
        self.head = 0
        self.stale: dict[int, int] = {}     # key -> its dead occurrences in fifo[head:]
        self.num_stale = 0
        self.runs: dict[int, list[_Run]] = {}   # base -> its runs holding keys
        self.num_run_keys = 0
        self.num_run_entries = 0            # _Run entries in fifo[head:], held keys or not

    def run_of(self, key: int) -> tuple[_Run, int] | None:
        """The run holding `key`, and the key's index in it; None when no run holds it."""
        v = -key - 1
        if v < 0:
            return None
        rs = self.runs.get(-(((v >> RUN_BITS) << RUN_BITS) + 1))
        if rs is None:
            return None
        i = v & RUN_MASK
        for r in rs:
            if r.lo <= i < r.hi and (r.holes is None or i not in r.holes):
                return r, i
        return None

    def __contains__(self, key: int) -> bool:
        return key in self.live or (bool(self.runs) and self.run_of(key) is not None)

    def __len__(self) -> int:
        return len(self.live) + self.num_run_keys

    def __iter__(self) -> Iterator[int]:
        """Keys, least recently used first."""
        skip = dict(self.stale)
        for e in self.fifo[self.head:]:
            if type(e) is _Run:
                for i in range(e.lo, e.hi):
                    if e.holes is None or i not in e.holes:
                        yield e.base - i
                continue
            c = skip.get(e, 0)
            if c:
                skip[e] = c - 1
            else:
                yield e

    def touch(self, key: int) -> None:
        """Make a held key the most recent."""
        if key not in self.live:            # a run's key leaves its run and becomes a single key
            self._leave_run(key)
            self.live.add(key)
            self.fifo.append(key)
            return
        self.fifo.append(key)
        self.stale[key] = self.stale.get(key, 0) + 1
        self.num_stale += 1

    def remove(self, key: int) -> None:
        if key not in self.live:
            self._leave_run(key)
            return
        self.live.remove(key)
        self.stale[key] = self.stale.get(key, 0) + 1
        self.num_stale += 1

    def _leave_run(self, key: int) -> None:
        found = self.run_of(key)
        if found is None:
            raise KeyError(key)
        r, i = found
        r.count -= 1
        self.num_run_keys -= 1
        if i == r.lo:
            r.lo += 1
            self._trim(r)
        elif i == r.hi - 1:
            r.hi -= 1
            while r.holes and r.hi - 1 in r.holes:
                r.holes.discard(r.hi - 1)
                r.hi -= 1
        else:
            if r.holes is None:
                r.holes = set()
            r.holes.add(i)
        if not r.count:
            self._forget(r)

    @staticmethod
    def _trim(r: _Run) -> None:
        while r.holes and r.lo in r.holes:
            r.holes.discard(r.lo)
            r.lo += 1

    def _forget(self, r: _Run) -> None:
        """An emptied run: out of the index (its fifo entry is skipped when met)."""
        rs = self.runs[r.base]
        rs.remove(r)
        if not rs:
            del self.runs[r.base]

    def insert(self, key: int) -> int | None:
        """Add `key` (not held) as the most recent; return the key evicted to make room (None:
        none).  A tier of capacity 0 holds nothing: the key itself comes back."""
        if self.capacity_blocks <= 0:
            return key
        self.live.add(key)
        self.fifo.append(key)
        if len(self) > self.capacity_blocks:
            return self._evict(1, True)[0]
        return None

    def insert_run(self, base: int, lo: int, hi: int) -> None:
        """Add the keys base - i for lo <= i < hi (none held), in order, as one entry, and evict
        the oldest keys beyond the capacity (not listed)."""
        if hi <= lo:
            return
        r = _Run(base, lo, hi)
        self.fifo.append(r)
        self.num_run_entries += 1
        rs = self.runs.get(base)
        if rs is None:
            self.runs[base] = [r]
        else:
            rs.append(r)
        self.num_run_keys += hi - lo
        excess = len(self) - self.capacity_blocks
        if excess > 0:
            self._evict(excess, False)

    def evict_excess(self) -> list[int]:
        """Evict the oldest keys until the tier is within its capacity; return them."""
        excess = len(self) - self.capacity_blocks
        if excess <= 0:
            return []
        if self.num_stale or self.num_run_entries:
            return self._evict(excess, True)
        h = self.head
        victims = self.fifo[h: h + excess]
        self.head = h + excess
        deque(map(self.live.remove, victims), maxlen=0)
        self._compact()
        return victims

    def _evict(self, excess: int, collect: bool) -> list[int]:
        """Evict the `excess` oldest keys; return them when `collect`."""
        fifo, stale = self.fifo, self.stale
        victims: list[int] = []
        while excess > 0:
            e = fifo[self.head]
            if type(e) is _Run:
                if e.count:
                    take = min(excess, e.count)
                    if e.holes is None:
                        if collect:
                            victims.extend(range(e.base - e.lo, e.base - e.lo - take, -1))
                        e.lo += take
                    else:
                        n = 0
                        while n < take:
                            if e.lo in e.holes:
                                e.holes.discard(e.lo)
                            else:
                                if collect:
                                    victims.append(e.base - e.lo)
                                n += 1
                            e.lo += 1
                        self._trim(e)
                    e.count -= take
                    self.num_run_keys -= take
                    excess -= take
                    if e.count:
                        continue
                    self._forget(e)
                self.head += 1
                self.num_run_entries -= 1
                continue
            self.head += 1
            c = stale.get(e, 0)
            if c:
                if c == 1:
                    del stale[e]
                else:
                    stale[e] = c - 1
                self.num_stale -= 1
                continue
            self.live.remove(e)
            if collect:
                victims.append(e)
            excess -= 1
        self._compact()
        return victims

    def _compact(self) -> None:
        if self.head > 4096 and 2 * self.head > len(self.fifo):
            del self.fifo[: self.head]
            self.head = 0
