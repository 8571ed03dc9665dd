"""vLLM V0's block space manager: GPU and CPU block pools, fork / copy-on-write, swap maps.

Mechanism only (the policy is `sim.scheduler_v0`).  Follows vLLM 0.8.5's
vllm/core/block_manager.py `SelfAttnBlockSpaceManager` with the naive (no prefix caching)
allocator of vllm/core/block/naive_block.py, vllm/core/block/block_table.py and
vllm/core/block/cpu_gpu_block_allocator.py.  Read, not copied; what always holds:

* Each device has a free deque: allocation pops the *left* end, a block whose ref count drops
  to 0 is pushed back on the left (LIFO reuse).  GPU ids 0..G-1 and CPU ids 0..C-1 (vLLM numbers
  CPU blocks after the GPU ones and maps them back to zero-offset ids for the cache engine).
  V0 has no null block: all G GPU blocks are usable.
* A sequence's table holds `cdiv(slots, block_size)` blocks, `slots` being the tokens appended to
  it (vLLM's `num_full_slots`): the whole prompt at admission, then one token per decode step.
* `can_allocate(tokens)`: NEVER if `total - needed < watermark_blocks`, OK if
  `free - needed >= watermark_blocks`, else LATER (`watermark_blocks = int(0.01 * G)` by default).
* `can_append_slots`: the worst case, one touched block per running sequence for a one-token
  append (`BlockTable.get_num_blocks_touched_by_append_slots`), must not exceed the free blocks.
* Fork shares every block by ref count; appending into a block whose ref count is > 1 first drops
  that reference and takes a fresh block (copy-on-write), counted as one block copy.
* Swap moves *each sequence's* blocks separately: the source blocks lose one reference each, then
  one new destination block is taken per table entry.  So a forked group is un-shared by a swap
  and its shared blocks are copied once per sequence — vLLM 0.8.5's behaviour (the paper's
  original manager swapped a shared block once).  The swap checks count full blocks plus the
  append-touched block of each sequence; swap-in also keeps the GPU watermark.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from sim.kv_state import KVState
from sim.request import Request


class AllocStatus(Enum):
    """vLLM's `AllocStatus`: admit now, later, or never (the request cannot ever fit)."""

    OK = 0
    LATER = 1
    NEVER = 2


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def num_tokens(req: Request) -> int:
    """Tokens of the sequence: prompt + generated (vLLM `Sequence.get_len`)."""
    return req.num_prompt_tokens + req.num_output


class DevicePool:
    """One device's KV blocks: ref counts, the free deque, and how many token slots each holds."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_ids: deque[int] = deque(range(num_blocks))  # left end: next to hand out
        self.ref = [0] * num_blocks                            # sequences whose table holds the block
        self.fill = [0] * num_blocks                           # token slots written in the block
        self.num_filled_slots = 0                              # sum of fill over blocks in use

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    def allocate(self, fill: int = 0) -> int:
        b = self.free_ids.popleft()
        self.ref[b] = 1
        self.fill[b] = fill
        self.num_filled_slots += fill
        return b

    def incr(self, b: int) -> None:
        self.ref[b] += 1

    def decr(self, b: int) -> None:
        self.ref[b] -= 1
        if self.ref[b] == 0:
            self.num_filled_slots -= self.fill[b]
            self.fill[b] = 0
            self.free_ids.appendleft(b)

    def add_fill(self, b: int, k: int) -> None:
        self.fill[b] += k
        self.num_filled_slots += k

    def check(self, owners: list[int], name: str) -> None:
        free = list(self.free_ids)
        assert len(free) == len(set(free)), f"{name}: a block is in the free deque twice"
        assert all(self.ref[b] == 0 for b in free), f"{name}: a free block has a nonzero ref count"
        used = sum(1 for r in self.ref if r > 0)
        assert used + len(free) == self.num_blocks, f"{name}: free + used != total"
        assert owners == self.ref, f"{name}: ref counts differ from the number of owning tables"
        assert sum(self.fill) == self.num_filled_slots, f"{name}: filled-slot total drifted"
        assert all(0 <= f <= self.block_size for f in self.fill), f"{name}: a block is over-filled"


class BlockManagerV0:
    """Block tables of every sequence of one replica, on the GPU or (swapped) on the CPU."""

    def __init__(self, num_gpu_blocks: int, num_cpu_blocks: int, block_size: int, watermark: float = 0.01):
        self.block_size = block_size
        self.gpu = DevicePool(num_gpu_blocks, block_size)
        self.cpu = DevicePool(num_cpu_blocks, block_size)
        self.watermark_blocks = int(watermark * num_gpu_blocks)
        self.tables: dict[int, list[int]] = {}      # req_id -> GPU block ids (RUNNING sequences)
        self.cpu_tables: dict[int, list[int]] = {}  # req_id -> CPU block ids (SWAPPED sequences)
        self.slots: dict[int, int] = {}             # req_id -> token slots appended (num_full_slots)

    # ------------------------------------------------------------------ queries
    def block_ids(self, req: Request) -> list[int]:
        """The sequence's block table (GPU ids, or CPU ids while swapped)."""
        return list(self.tables.get(req.req_id) or self.cpu_tables.get(req.req_id) or [])

    def can_allocate(self, num_prompt_tokens: int) -> AllocStatus:
        need = cdiv(num_prompt_tokens, self.block_size)
        if self.gpu.num_blocks - need < self.watermark_blocks:
            return AllocStatus.NEVER
        if self.gpu.num_free - need >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    def _touched_by_append(self, req: Request) -> int:
        """Blocks an append of the unseen tokens may touch (worst case: each one new or copied)."""
        s = self.slots[req.req_id]
        unseen = num_tokens(req) - s
        first_chunk = self.block_size - s % self.block_size
        return 1 - ((first_chunk - unseen) // self.block_size)   # 1 + ceil((unseen - first) / bs)

    def can_append_slots(self, seqs: list[Request]) -> bool:
        return sum(self._touched_by_append(s) for s in seqs) <= self.gpu.num_free

    def _swap_touched(self, seqs: list[Request]) -> int:
        return sum(self._touched_by_append(s) + self.slots[s.req_id] // self.block_size for s in seqs)

    def can_swap_out(self, seqs: list[Request]) -> bool:
        touched = self._swap_touched(seqs)
        return touched <= self.cpu.num_blocks and self.cpu.num_free >= touched

    def num_blocks_to_swap_out(self, seqs: list[Request]) -> int:
        return self._swap_touched(seqs)

    def can_swap_in(self, seqs: list[Request]) -> AllocStatus:
        touched = self._swap_touched(seqs)
        if self.gpu.num_blocks < touched:
            return AllocStatus.NEVER
        if self.gpu.num_free - touched >= self.watermark_blocks:
            return AllocStatus.OK
        return AllocStatus.LATER

    # ------------------------------------------------------------------ state changes
    def allocate(self, seqs: list[Request]) -> None:
        """Blocks for the first sequence's tokens; the others fork its table (shared blocks)."""
        first = seqs[0]
        n = num_tokens(first)
        bs = self.block_size
        table = [self.gpu.allocate(min(bs, n - i * bs)) for i in range(cdiv(n, bs))]
        self.tables[first.req_id] = table
        self.slots[first.req_id] = n
        for s in seqs[1:]:
            self.fork(first, s)

    def fork(self, parent: Request, child: Request) -> None:
        table = self.tables[parent.req_id]
        for b in table:
            self.gpu.incr(b)
        self.tables[child.req_id] = list(table)
        self.slots[child.req_id] = self.slots[parent.req_id]

    def append_slots(self, req: Request) -> int:
        """Slots for the sequence's unseen tokens; returns the number of copy-on-write copies."""
        rid = req.req_id
        table = self.tables[rid]
        s = self.slots[rid]
        unseen = num_tokens(req) - s
        if unseen <= 0:
            return 0
        bs = self.block_size
        gpu = self.gpu
        empty = len(table) * bs - s
        if empty < unseen:
            table.extend(gpu.allocate() for _ in range(cdiv(unseen - empty, bs)))
        copies = 0
        idx = s // bs
        room = bs - s % bs
        left = unseen
        while left > 0:
            k = min(left, room)
            b = table[idx]
            if gpu.ref[b] > 1:                    # shared: copy-on-write before writing into it
                gpu.decr(b)
                b = table[idx] = gpu.allocate(gpu.fill[b])
                copies += 1
            gpu.add_fill(b, k)
            left -= k
            idx += 1
            room = bs
        self.slots[rid] = s + unseen
        return copies

    def free(self, req: Request) -> None:
        """Drop the sequence's table, head first (so its last block is reused first)."""
        table = self.tables.pop(req.req_id, None)
        if table is None:
            return
        for b in table:
            self.gpu.decr(b)
        del self.slots[req.req_id]

    def _move(self, table: list[int], src: DevicePool, dst: DevicePool) -> list[int]:
        fills = [src.fill[b] for b in table]
        for b in table:
            src.decr(b)
        return [dst.allocate(f) for f in fills]

    def swap_out(self, seqs: list[Request]) -> int:
        """Move each sequence's blocks to the CPU; returns the number of block copies."""
        moved = 0
        for s in seqs:
            cpu_table = self._move(self.tables.pop(s.req_id), self.gpu, self.cpu)
            self.cpu_tables[s.req_id] = cpu_table
            s.swapped_block_ids = cpu_table
            moved += len(cpu_table)
        return moved

    def swap_in(self, seqs: list[Request]) -> int:
        """Move each sequence's blocks back to the GPU; returns the number of block copies."""
        moved = 0
        for s in seqs:
            table = self._move(self.cpu_tables.pop(s.req_id), self.cpu, self.gpu)
            self.tables[s.req_id] = table
            s.swapped_block_ids = []
            moved += len(table)
        return moved

    # ------------------------------------------------------------------ observability
    def usage_fraction(self) -> float:
        """state_fractions' first element (the KV manager's interface)."""
        g = self.gpu
        return (g.num_blocks - g.num_free) / g.num_blocks

    def state_fractions(self) -> KVState:
        """(kv_cache_usage, token-state, internal-fragmentation, reserved, cached-free) as fractions
        of the GPU's token slots.  Token state counts appended slots (vLLM's num_full_slots), shared
        blocks once; internal fragmentation is the empty slots of blocks in use."""
        g = self.gpu
        slots_total = g.num_blocks * self.block_size
        used = g.num_blocks - g.num_free
        filled = g.num_filled_slots
        return self.usage_fraction(), filled / slots_total, (used * self.block_size - filled) / slots_total, 0.0, 0.0, 0.0

    def check_invariants(self, running: list[Request] | None = None, waiting: object = None) -> None:
        """Both pools consistent; ref counts equal the number of tables holding each block; the
        running sequences (when given) are exactly those with GPU tables."""
        for pool, tables, name in ((self.gpu, self.tables, "GPU"), (self.cpu, self.cpu_tables, "CPU")):
            owners = [0] * pool.num_blocks
            for table in tables.values():
                for b in table:
                    owners[b] += 1
            pool.check(owners, name)
        bs = self.block_size
        for rid, table in self.tables.items():
            assert len(table) == cdiv(self.slots[rid], bs), f"sequence {rid}: table length != cdiv(slots)"
        assert not self.tables.keys() & self.cpu_tables.keys(), "a sequence is on both devices"
        assert self.slots.keys() == self.tables.keys() | self.cpu_tables.keys(), "slot counters drifted"
        if running is not None:
            assert {r.req_id for r in running} == self.tables.keys(), "running sequences != GPU tables"
