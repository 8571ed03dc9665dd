"""V0 block manager: hand-worked vLLM 0.8.5 walkthroughs (free-deque order, fork, copy-on-write,
swap maps, the watermark) and a Hypothesis state machine for its invariants (no block owned
twice, free + used = total on both devices, ref counts = owning tables)."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sim.block_manager_v0 import AllocStatus, BlockManagerV0
from sim.request import Request


def seq(req_id: int, prompt: int, output: int = 0) -> Request:
    r = Request(req_id, 0.0, prompt, 100)
    r.num_output = output
    return r


def test_allocate_takes_blocks_from_the_left_and_free_returns_them_head_first():
    bm = BlockManagerV0(6, 4, block_size=4, watermark=0.0)
    a, b = seq(0, 6), seq(1, 4)
    bm.allocate([a])
    bm.allocate([b])
    assert (bm.block_ids(a), bm.block_ids(b)) == ([0, 1], [2])
    bm.free(a)
    assert list(bm.gpu.free_ids) == [1, 0, 3, 4, 5]
    bm.check_invariants([b])


def test_append_fills_the_last_block_then_takes_a_new_one():
    bm = BlockManagerV0(4, 0, block_size=4, watermark=0.0)
    a = seq(0, 7)
    bm.allocate([a])
    a.num_output = 1                           # slot 8 fits in block 1
    assert bm.can_append_slots([a]) and bm.append_slots(a) == 0 and bm.block_ids(a) == [0, 1]
    a.num_output = 2                           # slot 9 needs block 2
    assert bm.append_slots(a) == 0 and bm.block_ids(a) == [0, 1, 2]
    assert bm.state_fractions()[:3] == (0.75, 9 / 16, 3 / 16)


def test_fork_shares_blocks_and_copy_on_write_happens_once_per_extra_sharer():
    bm = BlockManagerV0(8, 0, block_size=4, watermark=0.0)
    s0, s1, s2 = seq(0, 6), seq(1, 6), seq(2, 6)
    bm.allocate([s0, s1, s2])
    assert bm.gpu.ref[:2] == [3, 3] and bm.gpu.num_free == 6
    for s in (s0, s1, s2):
        s.num_output = 1
    assert [bm.append_slots(s) for s in (s0, s1, s2)] == [1, 1, 0]
    assert [bm.block_ids(s) for s in (s0, s1, s2)] == [[0, 2], [0, 3], [0, 1]]
    bm.check_invariants([s0, s1, s2])


def test_swap_out_and_in_move_each_sequence_and_keep_the_gpu_watermark():
    bm = BlockManagerV0(10, 3, block_size=4, watermark=0.1)     # 1 block of watermark
    a = seq(0, 8)
    bm.allocate([a])
    a.num_output = 1                           # one sampled token not yet in the table
    assert bm.can_allocate(32) is AllocStatus.LATER and bm.can_allocate(40) is AllocStatus.NEVER
    assert bm.can_allocate(28) is AllocStatus.OK
    assert bm.can_swap_out([a])                # 2 full blocks + 1 to append = 3 <= 3 CPU blocks
    assert bm.swap_out([a]) == 2 and a.swapped_block_ids == [0, 1] and bm.gpu.num_free == 10
    bm.allocate([seq(1, 28)])                  # 7 blocks: 3 free, 3 touched, 0 < watermark 1
    assert bm.can_swap_in([a]) is AllocStatus.LATER
    big = BlockManagerV0(2, 8, block_size=4, watermark=0.0)
    c = seq(0, 8)
    big.allocate([c])
    c.num_output = 1
    big.swap_out([c])
    assert big.can_swap_in([c]) is AllocStatus.NEVER   # 3 touched > 2 GPU blocks


class BlockManagerMachine(RuleBasedStateMachine):
    """Random allocate / fork-allocate / append / free / swap sequences keep every invariant."""

    def __init__(self) -> None:
        super().__init__()
        self.bm = BlockManagerV0(24, 12, block_size=4, watermark=0.05)
        self.on_gpu: list[Request] = []
        self.on_cpu: list[Request] = []
        self.next_id = 0

    @rule(prompt=st.integers(1, 30), n=st.integers(1, 3))
    def allocate(self, prompt: int, n: int) -> None:
        if self.bm.can_allocate(prompt) is not AllocStatus.OK:
            return
        seqs = [seq(self.next_id + k, prompt) for k in range(n)]
        self.next_id += n
        self.bm.allocate(seqs)
        self.on_gpu.extend(seqs)

    @precondition(lambda self: self.on_gpu)
    @rule(i=st.integers(0, 100), k=st.integers(1, 6))
    def append(self, i: int, k: int) -> None:
        r = self.on_gpu[i % len(self.on_gpu)]
        r.num_output += k
        needed = -(-(self.bm.slots[r.req_id] + k) // 4) - len(self.bm.tables[r.req_id]) + 1
        if needed > self.bm.gpu.num_free:
            r.num_output -= k                  # the scheduler would preempt instead
            return
        self.bm.append_slots(r)

    @precondition(lambda self: self.on_gpu)
    @rule(i=st.integers(0, 100))
    def free(self, i: int) -> None:
        r = self.on_gpu.pop(i % len(self.on_gpu))
        self.bm.free(r)

    @precondition(lambda self: self.on_gpu)
    @rule(i=st.integers(0, 100))
    def swap_out(self, i: int) -> None:
        r = self.on_gpu[i % len(self.on_gpu)]
        if self.bm.can_swap_out([r]):
            self.bm.swap_out([r])
            self.on_gpu.remove(r)
            self.on_cpu.append(r)

    @precondition(lambda self: self.on_cpu)
    @rule(i=st.integers(0, 100))
    def swap_in(self, i: int) -> None:
        r = self.on_cpu[i % len(self.on_cpu)]
        if self.bm.can_swap_in([r]) is AllocStatus.OK:
            self.bm.swap_in([r])
            self.on_cpu.remove(r)
            self.on_gpu.append(r)

    @invariant()
    def consistent(self) -> None:
        self.bm.check_invariants(self.on_gpu)
        assert set(self.bm.cpu_tables) == {r.req_id for r in self.on_cpu}
        for pool in (self.bm.gpu, self.bm.cpu):
            owned = [b for t in (self.bm.tables if pool is self.bm.gpu else self.bm.cpu_tables).values() for b in t]
            assert len(set(owned)) + pool.num_free == pool.num_blocks


TestBlockManagerMachine = BlockManagerMachine.TestCase
TestBlockManagerMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
