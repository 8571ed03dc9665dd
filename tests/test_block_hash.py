"""Chained block hashes (sim/block_hash.py): the chain is vLLM's hash(parent, block content) and the
64-bit arithmetic that the compiled module uses is exactly CPython's tuple hash."""

from __future__ import annotations

import random

import pytest

from sim import block_hash as bh
from sim.request import Request


def _reference_chain(segments: tuple[tuple[int, int], ...], bs: int) -> list[int]:
    """Independent truth: walk the tokens block by block, describe each block by its pieces
    (segment id, start, end) and chain hash((parent, *pieces)); a one-piece block is hashed as
    (parent, piece), which is what `hash((parent, *pieces))` is for one piece."""
    pieces_of: list[tuple[int, int, int]] = []
    out: list[int] = []
    parent = 0
    for seg_id, length in segments:
        pos = 0
        while pos < length:
            fill = bs - sum(e - s for _, s, e in pieces_of)
            take = min(fill, length - pos)
            pieces_of.append((seg_id, pos, pos + take))
            pos += take
            if take == fill:
                parent = hash((parent, *pieces_of))
                out.append(parent)
                pieces_of = []
    return out


@pytest.mark.parametrize("v", [0, 1, 5, (1 << 61) - 2, (1 << 61) - 1, 1 << 61, (1 << 63) - 1,
                               -1, -2, -3, -(1 << 61) + 1, -(1 << 61), -(1 << 61) - 1, -(1 << 63)])
def test_int_hash_edges(v: int) -> None:
    """Around the modulus 2**61 - 1, -1 (which hashes to -2) and the ends of int64, as a parent
    and (non-negative ones) as a segment id."""
    assert bh._run_block_arith(v, 3, 0, 16) == hash((v, (3, 0, 16)))
    if v >= 0:
        assert bh._run_block_arith(-5, v, 16, 32) == hash((-5, (v, 16, 32)))


def test_block_arithmetic_is_cpythons_tuple_hash() -> None:
    rng = random.Random(7)
    edge = [-(1 << 63), -(1 << 61), -2, -1, 0, 1, (1 << 61) - 1, (1 << 63) - 1]
    for _ in range(20_000):
        parent = rng.choice(edge) if rng.random() < 0.1 else rng.randrange(-(1 << 63), 1 << 63)
        seg = rng.randrange(0, 1 << 50)
        start = rng.randrange(0, 1 << 20)
        end = start + rng.randrange(1, 129)
        assert bh._run_block_arith(parent, seg, start, end) == hash((parent, (seg, start, end)))
    assert bh._self_check()


def test_the_compiled_module_hashes_by_arithmetic() -> None:
    """Compiled, the arithmetic must pass its import-time check (else it silently fell back to
    `hash`: same results, none of the speed); uncompiled, `hash` itself is used."""
    compiled = bh.__file__ is not None and not bh.__file__.endswith(".py")
    assert bh.hashing_by_arithmetic() == compiled


def test_chain_matches_the_block_by_block_reference() -> None:
    """Sessions-like segment lists (runs longer and shorter than a block, blocks spanning three
    runs), fresh and resumed from a memoised head, for two block sizes."""
    rng = random.Random(3)
    bh.clear_chain_memo()
    for bs in (16, 5):
        for conv in range(30):
            context: tuple[tuple[int, int], ...] = ((1, rng.randrange(0, 40)),)
            for turn in range(6):
                context = (*context, ((1 << 42) + (conv << 20) + turn, rng.randrange(1, 3 * bs)))
                assert bh.shared_prefix_hashes(context, bs).tolist() == _reference_chain(context, bs)
    bh.clear_chain_memo()


def test_resumed_chains_past_empty_runs_and_block_aligned_ends() -> None:
    """A turn resumes from its predecessor's chain reading only the new runs (the memo keeps the
    predecessor's token count): runs of length 0 and runs ending exactly on a block boundary, at
    the resume point and before it, must land the walk on the same block as hashing the whole
    list afresh, and both equal the token-by-token reference (an empty run inside a block is no
    piece of its key: before this test it was, and a resumed chain could differ from a fresh one)."""
    rng = random.Random(11)
    for bs in (4, 16):
        for conv in range(40):
            bh.clear_chain_memo()
            context: tuple[tuple[int, int], ...] = ((1, rng.choice((0, bs, 2 * bs, 3))),)
            for turn in range(8):
                runs = tuple(((1 << 42) + (conv << 20) + 2 * turn + k, rng.choice((0, 0, bs, 2 * bs, 1, bs - 1, 3 * bs + 2)))
                             for k in range(rng.choice((1, 2))))
                context = (*context, *runs)
                num_blocks = sum(n for _, n in context) // bs
                fresh = bh._extend_chain(bh.EMPTY_CHAIN, context, bs, num_blocks).tolist() if num_blocks else []
                assert bh.shared_prefix_hashes(context, bs).tolist() == fresh == _reference_chain(context, bs)
    bh.clear_chain_memo()


def test_chains_stay_right_when_the_memo_overflows() -> None:
    """More live conversations than the memo keeps: the first turns of 9,000 conversations fill it
    past its size (its older half is dropped), then each one's second turn resumes from a chain
    still memoised or is hashed afresh; either way the reference chain."""
    bh.clear_chain_memo()
    convs = [((7, 20), ((1 << 42) + (c << 8), 9 + c % 30)) for c in range(9000)]
    for ctx in convs:
        assert bh.shared_prefix_hashes(ctx, 16).tolist() == _reference_chain(ctx, 16)
    for c, ctx in enumerate(convs):
        nxt = (*ctx, ((1 << 42) + (c << 8) + 1, 17), ((1 << 42) + (c << 8) + 2, 5 + c % 7))
        assert bh.shared_prefix_hashes(nxt, 16).tolist() == _reference_chain(nxt, 16)
    bh.clear_chain_memo()


def test_a_chain_handed_out_never_changes() -> None:
    """Chains are shared (the memo, every request of a conversation's turn): extending one for the
    next turn makes a new array and leaves the one already handed out as it was."""
    bh.clear_chain_memo()
    ctx = ((7, 40), ((1 << 42), 50), ((1 << 42) + 1, 30))
    first = bh.shared_prefix_hashes(ctx, 16)
    kept = first.tolist()
    nxt = (*ctx, ((1 << 42) + 2, 70), ((1 << 42) + 3, 20))
    second = bh.shared_prefix_hashes(nxt, 16)
    assert first.tolist() == kept and second is not first
    assert second.tolist()[: len(kept)] == kept and len(second) == (40 + 50 + 30 + 70 + 20) // 16
    assert bh.shared_prefix_hashes(nxt, 16) is second          # memoised: the same chain again
    bh.clear_chain_memo()


def _turn(key: int, segments: tuple[tuple[int, int], ...], head: int, lends: bool) -> Request:
    return Request(key, 0.0, sum(n for _, n in segments[:-1]), segments[-1][1], segments, content_key=key,
                   head_key=head, lends_chain=lends)


def test_a_sessions_turns_hand_their_chains_on() -> None:
    """A session's turns (`Request.head_key`: the previous turn's content key; `lends_chain`: a
    next turn follows) get the reference chain, each resumed from its predecessor's (whose hashes
    it starts with, unchanged), for two block sizes and conversations hashed side by side."""
    rng = random.Random(5)
    for bs in (16, 5):
        bh.clear_chain_memo()
        convs = [((1, 30),) for _ in range(20)]
        last: list[Request | None] = [None] * 20
        for turn in range(6):
            for c in range(20):
                convs[c] = (*convs[c], ((1 << 42) + (c << 20) + 2 * turn, rng.randrange(0, 40)),
                            ((1 << 42) + (c << 20) + 2 * turn + 1, rng.randrange(1, 3 * bs)))
                key = 1000 * turn + c
                prev = last[c]
                req = _turn(key, convs[c], prev.content_key if prev is not None else -1, turn < 5)
                before = prev.prefix_hashes.tolist() if prev is not None else []
                chain = bh.request_chain(req, bs)
                assert chain.tolist() == _reference_chain(convs[c], bs)
                assert chain.tolist()[: len(before)] == before
                if prev is not None:
                    assert prev.prefix_hashes.tolist() == before           # the lender's chain is its own still
                last[c] = req
    bh.clear_chain_memo()


def test_lent_chains_stay_right_past_the_lending_limit() -> None:
    """More turns lend chains than are kept (9,000 lenders whose next turns come only after all of
    them: the older half of the lent chains is dropped): every next turn gets the reference chain,
    resumed or hashed afresh."""
    bh.clear_chain_memo()
    firsts = [((7, 20), ((1 << 42) + (c << 8), 9 + c % 30)) for c in range(9000)]
    for c, ctx in enumerate(firsts):
        assert bh.request_chain(_turn(c, ctx, -1, True), 16).tolist() == _reference_chain(ctx, 16)
    for c, ctx in enumerate(firsts):
        nxt = (*ctx, ((1 << 42) + (c << 8) + 1, 17), ((1 << 42) + (c << 8) + 2, 5 + c % 7))
        assert bh.request_chain(_turn(10_000 + c, nxt, c, False), 16).tolist() == _reference_chain(nxt, 16)
    bh.clear_chain_memo()


def test_a_lent_chain_is_used_only_for_its_own_head() -> None:
    """The entry lent under a content key is taken once, and only by a turn whose segments it
    heads at the same block size: a second taker, a turn with other segments, another block size
    (a later run's rows reuse the keys) all hash their chains afresh, and get the reference."""
    bh.clear_chain_memo()
    ctx = ((7, 40), ((1 << 42), 50), ((1 << 42) + 1, 30))
    nxt = (*ctx, ((1 << 42) + 2, 70), ((1 << 42) + 3, 20))
    other = ((7, 40), ((1 << 42), 51), ((1 << 42) + 1, 30), ((1 << 42) + 2, 70), ((1 << 42) + 3, 20))
    for bs_lend, bs_take, taker in ((16, 16, other), (16, 8, nxt), (16, 16, nxt)):
        bh.clear_chain_memo()
        bh.request_chain(_turn(1, ctx, -1, True), bs_lend)
        assert bh.request_chain(_turn(2, taker, 1, False), bs_take).tolist() == _reference_chain(taker, bs_take)
        assert bh.request_chain(_turn(3, taker, 1, False), bs_take).tolist() == _reference_chain(taker, bs_take)
    bh.clear_chain_memo()


def test_equal_prefixes_share_hashes_and_different_ones_do_not() -> None:
    a = bh.shared_prefix_hashes(((10, 40), (11, 40)), 16)
    b = bh.shared_prefix_hashes(((10, 40), (12, 40)), 16)
    assert len(a) == len(b) == 5
    assert a[:2] == b[:2]                 # blocks 0-1 lie inside segment 10
    assert not set(a[2:]) & set(b[2:])    # block 2 spans into the differing segment: the chains part


def test_memoised_chains_are_used_only_for_their_own_segments() -> None:
    """The memo is keyed by (number of segments, last segment, block size): lists that share that
    key but differ earlier must still get their own chains, fresh and resumed."""
    bh.clear_chain_memo()
    for first in (1, 2, 1, 3):
        for tail in ((), ((9, 33),), ((9, 33), (10, 7))):
            context = ((first, 40), (5, 40), *tail)
            assert bh.shared_prefix_hashes(context, 16).tolist() == _reference_chain(context, 16)
    for tail in (((9, 33),), ((9, 33), (10, 7))):          # resumed from a head memoised under the same key
        bh.clear_chain_memo()
        bh.shared_prefix_hashes(((1, 40), (5, 40)), 16)
        context = ((2, 40), (5, 40), *tail)
        assert bh.shared_prefix_hashes(context, 16).tolist() == _reference_chain(context, 16)
    bh.clear_chain_memo()


def test_tokens_covered_sums_each_lists_runs() -> None:
    # a system prompt of 300, a message of 40 and an answer of 200; an empty list; one run
    assert bh.tokens_covered([((7, 300), (8, 40), (9, 200)), (), ((1 << 42, 5),)]) == [540, 0, 5]
