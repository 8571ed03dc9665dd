"""Tiered KV cache: prefix blocks offloaded to CPU memory (and optionally a local disk) below the
GPU prefix cache, as vLLM's `OffloadingConnector` (`--kv-offloading-size`) and LMCache do.

Followed: vLLM 0.32 vllm/distributed/kv_transfer/kv_connector/v1/offloading_connector.py,
offloading/scheduler.py (`get_num_new_matched_tokens`, `update_state_after_alloc`,
`_build_store_jobs`), vllm/v1/kv_offload/cpu/spec.py, cpu/manager.py, cpu/policies/lru.py,
vllm/config/vllm.py (`_post_init_kv_transfer_config`), vllm/v1/core/sched/scheduler.py (the
WAITING_FOR_REMOTE_KVS path).  What vLLM does and what pagesim keeps:

* **What is stored, and when.**  Every full *prompt* block is offered to the CPU tier as soon as
  it is computed (vLLM builds store jobs from each step's scheduled tokens; `offload_prompt_only`
  is on by default, so generated tokens are never stored).  A block already in the tier is not
  stored again, only made most recent.  A request without a load also offers the blocks it hit
  in the GPU cache (vLLM's store index starts at 0 unless a load moved it).  Stores are
  asynchronous DMA on the device-to-host direction and never block a step; their bytes are
  counted (`kv_offload_store_bytes`), their link time is not charged (saturation not modelled).
* **The CPU tier** is an LRU of block keys (vLLM's default `eviction_policy: lru`) holding
  `kv_offloading_size` GiB // bytes of one block of all layers on all TP ranks (vLLM: the size is
  the total over the TP ranks; one chunk = one GPU block, `blocks_per_chunk` 1).  vLLM refreshes
  a request's keys when the request finishes; pagesim when they are stored or loaded.
* **The disk tier** (LMCache's `local_disk`, `max_local_disk_size`) is an LRU below the CPU tier
  that receives the blocks the CPU tier evicts; a disk hit is read at the disk bandwidth and then
  crosses the host link; it is not promoted back into the CPU tier.
* **Lookup.**  After the GPU prefix hit, the chain of block hashes continues in the CPU tier,
  then the disk tier (a maximal prefix: the first miss stops it).  The hit is loaded before the
  request is scheduled: the request waits (vLLM's WAITING_FOR_REMOTE_KVS) holding its blocks,
  then is scheduled with those tokens computed (all of them but the last prompt token at most).
* **Load time**: loads queue on the host-to-device link of the replica, one after another:
  blocks × (per-copy latency + bytes per rank / link bandwidth) — the cost profile's swap terms
  with one DMA per block (all layers contiguous, vLLM >= 0.12), each TP rank moving its own shard
  over its own link — plus disk blocks × bytes of all ranks / disk bandwidth.  Loads run beside
  the model (DMA on their own stream): they delay the waiting request, not the step.

Pure data structures; no SimPy, no time other than the numbers handed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30


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

    def insert_new(self, keys: list[int]) -> list[int]:
        """Add keys none of which is held, in order; return the evicted keys, oldest first."""
        self.live.update(keys)
        self.fifo.extend(keys)
        return self.evict_excess()

    def insert_run(self, base: int, lo: int, hi: int) -> None:
        """`insert_new` of the keys base - i for lo <= i < hi (none held), as one entry; the
        evicted keys are not listed."""
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


@dataclass(frozen=True, slots=True)
class OffloadSetup:
    """Sizes and link speeds of the tiers of one replica."""

    cpu_blocks: int                    # CPU tier capacity in blocks
    disk_blocks: int                   # disk tier capacity in blocks (0: no disk tier)
    block_bytes_per_rank: int          # one block of all layers on one TP rank
    tensor_parallel_size: int
    s_per_block_copy: float            # per-block DMA latency (the profile's swap term)
    s_per_byte: float                  # host link seconds per byte, per rank (the profile's swap term)
    disk_bytes_per_s: float = 0.0      # disk read bandwidth

    @property
    def block_bytes(self) -> int:
        """Bytes of one block on all ranks: what a tier stores and counts."""
        return self.block_bytes_per_rank * self.tensor_parallel_size

    def load_time_s(self, cpu_blocks: int, disk_blocks: int) -> float:
        """Seconds to bring `cpu_blocks` from the CPU tier and `disk_blocks` from the disk into the
        GPU: every block crosses the host link; disk blocks are read from the disk first."""
        n = cpu_blocks + disk_blocks
        t = n * (self.s_per_block_copy + self.s_per_byte * self.block_bytes_per_rank)
        if disk_blocks:
            t += disk_blocks * self.block_bytes / self.disk_bytes_per_s
        return t


def tier_blocks(size_gib: float, block_bytes_per_rank: int, tensor_parallel_size: int) -> int:
    """Blocks a tier of `size_gib` GiB holds (vLLM: cpu_bytes_to_use // bytes per chunk of all ranks)."""
    return int(size_gib * GIB) // (block_bytes_per_rank * tensor_parallel_size)


class KVOffload:
    """The CPU (and disk) tiers of one replica, its host link, and what went through them."""

    def __init__(self, setup: OffloadSetup):
        self.setup = setup
        self.cpu = LRUTier(setup.cpu_blocks)
        self.disk: LRUTier | None = LRUTier(setup.disk_blocks) if setup.disk_blocks > 0 else None
        self.link_free_s = 0.0             # the host-to-device link is busy with loads until then
        self.num_stored_blocks = 0         # blocks written into the CPU tier
        self.num_disk_stored_blocks = 0    # blocks the CPU tier evicted into the disk tier
        self.num_cpu_hit_blocks = 0        # blocks loaded from each tier
        self.num_disk_hit_blocks = 0
        self.num_loads = 0                 # requests that loaded something
        self.load_wait_s = 0.0             # sum over loads of (ready - requested): queueing + transfer
        self.query_blocks = 0              # full prompt blocks past the GPU hit that were looked up

    def store(self, key: int) -> None:
        """Offer one computed prompt block: store it unless the CPU tier has it (then refresh it)."""
        self.store_many([key])

    def store_new(self, keys: list[int]) -> None:
        """`store_many` for keys the caller knows are in neither tier (a prompt's own blocks,
        computed for the first time): inserts and evictions by whole slices, same result."""
        if self.cpu.capacity_blocks <= 0 or self.disk is not None:
            self.store_many(keys)
            return
        self.num_stored_blocks += len(keys)
        self.cpu.insert_new(keys)

    def store_run(self, base: int, lo: int, hi: int) -> None:
        """`store_new` of the keys base - i for lo <= i < hi (a prompt's own blocks, computed for
        the first time; `own_key_base`), held as one entry of the CPU tier."""
        if self.cpu.capacity_blocks <= 0 or self.disk is not None:
            self.store_many(list(range(base - lo, base - hi, -1)))
            return
        self.num_stored_blocks += max(hi - lo, 0)
        self.cpu.insert_run(base, lo, hi)

    def store_many(self, keys: list[int]) -> None:
        """Offer computed prompt blocks in order (one request's, one step): each is stored unless
        the CPU tier has it (then it is refreshed); a stored block leaves the disk tier (the fresh
        copy lives in the CPU tier); the CPU tier's evictions fall into the disk tier.  The batch's
        evictions are taken after its inserts, oldest first — the same victims as one by one
        unless a key the batch refreshes was itself among the tier's oldest few."""
        cpu, disk = self.cpu, self.disk
        if cpu.capacity_blocks <= 0:
            if disk is not None:              # everything falls through to the disk
                for k in keys:
                    if k not in disk:
                        self.num_disk_stored_blocks += 1
                        disk.insert(k)
                    else:
                        disk.touch(k)
            return
        live, fifo, runs = cpu.live, cpu.fifo, cpu.runs
        n = 0
        for k in keys:
            if k in live or (runs and cpu.run_of(k) is not None):
                cpu.touch(k)
                continue
            if disk is not None and k in disk:
                disk.remove(k)
            live.add(k)
            fifo.append(k)
            n += 1
        self.num_stored_blocks += n
        victims = cpu.evict_excess()
        if victims and disk is not None:
            self.num_disk_stored_blocks += len(victims)
            for v in victims:
                disk.insert(v)

    def lookup(self, keys: list[int]) -> tuple[int, int]:
        """The longest run of `keys` (consecutive blocks after the GPU hit) held by the tiers:
        (blocks in the CPU tier, blocks on disk) within that run."""
        _, n_cpu, n_disk = self.lookup_prompt(keys, 0, 0, len(keys))
        return n_cpu, n_disk

    def lookup_prompt(self, shared: list[int], base: int, start: int, end: int) -> tuple[list[int], int, int]:
        """`lookup` over prompt blocks start <= i < end whose keys are `shared[i]` (chained hashes
        of shared segments) then `base - i` (the prompt's own content), making keys only as far as
        the run of hits goes: (the hit keys, blocks in the CPU tier, blocks on disk)."""
        cpu = self.cpu
        live, runs = cpu.live, cpu.runs
        disk = self.disk
        n = len(shared)
        keys: list[int] = []
        n_cpu = n_disk = 0
        for i in range(start, end):
            k = shared[i] if i < n else base - i
            if k in live or (runs and cpu.run_of(k) is not None):
                n_cpu += 1
            elif disk is not None and k in disk:
                n_disk += 1
            else:
                break
            keys.append(k)
        return keys, n_cpu, n_disk

    def load(self, keys: list[int], n_cpu: int, n_disk: int, now_s: float) -> float:
        """Start loading the first `n_cpu + n_disk` of `keys` (a `lookup` result) at `now_s`;
        returns when they are in the GPU.  Loads queue on the host link."""
        cpu, disk = self.cpu, self.disk
        for k in keys[: n_cpu + n_disk]:
            if k in cpu:
                cpu.touch(k)
            elif disk is not None:
                disk.touch(k)
        start = max(now_s, self.link_free_s)
        ready = start + self.setup.load_time_s(n_cpu, n_disk)
        self.link_free_s = ready
        self.num_cpu_hit_blocks += n_cpu
        self.num_disk_hit_blocks += n_disk
        self.num_loads += 1
        self.load_wait_s += ready - now_s
        return ready

    @property
    def load_bytes(self) -> int:
        return (self.num_cpu_hit_blocks + self.num_disk_hit_blocks) * self.setup.block_bytes

    @property
    def store_bytes(self) -> int:
        return self.num_stored_blocks * self.setup.block_bytes


def offload_for(eng: Any, coster: Any, num_layers: int) -> KVOffload:
    """The tiers of one replica from the engine options (`sim.config.EngineConfig`) and its step
    coster (block bytes per rank and the profile's host-link swap terms).  The profile's swap
    latency is per block *per layer* (vLLM V0 copies each layer's block separately); since vLLM
    0.12 an offloaded block is one contiguous buffer of all layers moved by one DMA, so a load
    pays that latency once per block: `swap_s_per_block_copy / num_layers`."""
    tp = eng.tensor_parallel_size
    bb = coster.kv_bytes_per_block
    p = coster.profile
    return KVOffload(OffloadSetup(
        cpu_blocks=tier_blocks(eng.kv_offloading_size, bb, tp),
        disk_blocks=tier_blocks(eng.kv_offloading_disk_size, bb, tp),
        block_bytes_per_rank=bb, tensor_parallel_size=tp,
        s_per_block_copy=p.swap_s_per_block_copy / max(num_layers, 1), s_per_byte=p.swap_s_per_byte,
        disk_bytes_per_s=eng.kv_offloading_disk_gb_per_s * 1e9))
