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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sim.lru_tier import LRUTier

GIB = 1 << 30


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

    def store_run(self, base: int, lo: int, hi: int) -> None:
        """`store_many` of the keys base - i for lo <= i < hi, which the caller knows are in neither
        tier (a prompt's own blocks, computed for the first time; `own_key_base`): one entry of the
        CPU tier."""
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

    def lookup_prompt(self, shared: Sequence[int], base: int, start: int, end: int) -> tuple[list[int], int, int]:
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
