"""Chained block hashes, as vLLM's prefix cache computes them, from pagesim's content model.

vLLM hashes each *full* block as hash(parent_hash, token ids of the block) (vllm/v1/core/
kv_cache_utils.py `hash_block_tokens`), so equal hashes mean equal prefixes.  pagesim has no token
ids; a prompt's content is described by segments (see `sim.requests_table`).  The hash of block i
is built from what those tokens *are*:

* blocks wholly inside the shared segments chain (parent, pieces) with pieces =
  ((segment_id, start_offset, end_offset), ...) — equal segment lists give equal chains;
* a block holding any token unique to the prompt is keyed (1, content_key, i): unique content
  makes the whole chain from there unique, and parallel-sampling siblings share content_key;
* a block holding generated tokens is keyed (2, output_key, i): unique to the sequence.

Only ints and tuples of ints are hashed, so hashes do not depend on PYTHONHASHSEED: runs are
reproducible bit for bit.

A chain is an `array('q')` of 64-bit hashes (`Chain`), not a list of Python ints: a multi-turn run
makes millions of them, and as machine integers they cost no object each, are copied as one block
of memory when a conversation's next turn extends its previous one, hold nothing for the garbage
collector to traverse, and reach the block pool's compiled loops (`sim.block_pool`) without a
conversion per hash.
"""

from __future__ import annotations

from array import array
from typing import Any

from sim.request import Request

try:                     # Cython compiles this file (setup_native.py, C types in block_hash.pxd)
    import cython
    COMPILED: bool = cython.compiled
except ImportError:      # no Cython at run time: plain Python
    COMPILED = False

# CPython's hash of a tuple of ints (Objects/tupleobject.c `tuplehash`, xxHash-based since 3.8;
# Python/pyhash.c and Objects/longobject.c `long_hash` for the ints), done in 64-bit unsigned
# arithmetic so that, compiled, a block's chained hash costs a few multiplications instead of two
# tuple allocations.  It must give exactly `hash((parent, (segment_id, start, end)))`: `FAST`
# below checks that on this interpreter at import, and the plain `hash` is used otherwise.
_M64 = 0xFFFFFFFFFFFFFFFF            # 2**64 - 1
_TWO63 = 0x8000000000000000          # 2**63
_P61 = 0x1FFFFFFFFFFFFFFF            # 2**61 - 1: ints hash to their value modulo this prime
_XX1 = 11400714785074694791
_XX2 = 14029467366897019727
_XX5 = 2870177450012600261
_LEN_SALT = _XX5 ^ 3527539
_MINUS_ONE_HASH = 1546275796         # what tuplehash returns instead of -1


def _mod_p61(u: int) -> int:
    """u % (2**61 - 1) for 0 <= u < 2**63 without a division (a Mersenne prime: 2**61 = 1)."""
    r = (u & _P61) + (u >> 61)
    return r - _P61 if r >= _P61 else r


def _int_lane(v: int) -> int:
    """hash(v) of an int in [-2**63, 2**63), as an unsigned 64-bit value."""
    if v >= 0:
        return _mod_p61(v)
    u = -(v + 1)                     # |v| - 1: no overflow at -2**63
    m = _mod_p61(u) + 1              # -((u % P + 1) % P), m in [1, P]
    r = -m if m < _P61 else 0
    if r == -1:
        r = -2
    return r & _M64


def _mix(acc: int, lane: int) -> int:
    acc = (acc + lane * _XX2) & _M64
    acc = ((acc << 31) | (acc >> 33)) & _M64
    return (acc * _XX1) & _M64


def _close(acc: int, n: int) -> int:
    acc = (acc + (n ^ _LEN_SALT)) & _M64
    return _MINUS_ONE_HASH if acc == _M64 else acc


def _signed(u: int) -> int:
    if u >= _TWO63:
        d = _M64 - u                 # < 2**63
        return -d - 1
    return u


def _piece_lane(seg: int, start: int, end: int) -> int:
    """hash((seg, start, end)) as unsigned."""
    return _close(_mix(_mix(_mix(_XX5, _int_lane(seg)), _int_lane(start)), _int_lane(end)), 3)


def _run_block_arith(parent: int, seg: int, start: int, end: int) -> int:
    """hash((parent, (seg, start, end))) by the arithmetic above."""
    return _signed(_close(_mix(_mix(_XX5, _int_lane(parent)), _piece_lane(seg, start, end)), 2))


def _run_block(parent: int, seg: int, start: int, end: int) -> int:
    """hash((parent, (seg, start, end))): compiled, by the arithmetic; else by `hash` itself."""
    if FAST:
        return _run_block_arith(parent, seg, start, end)
    return hash((parent, (seg, start, end)))


def _self_check() -> bool:
    cases = ((0, 1, 0, 16), (-1, 7, 16, 32), (-(1 << 63), (1 << 42) + 3, 4080, 4096),
             (_P61, _P61 - 1, 2 * _P61, -_P61), (-_P61 - 1, 3 * _P61 + 2, (1 << 63) - 1, -2),
             ((1 << 63) - 1, 5, 1 << 40, (1 << 40) + 16), (123456789123456789, 0, 2, 18))
    spans = ((0, [(1, 0, 5), (2, 0, 11)]), (-7, [(3, 4, 9), (1 << 42, 0, 2), (5, 0, 5)]),
             ((1 << 63) - 1, [((1 << 41) + 7, 100, 116)]))
    keys = ((1, 0, 16, 16), (12, (1 << 42) + (5 << 20) + 3, 250, 32), ((1 << 40), -3, 0, 1))
    return (all(_run_block_arith(p, s, a, b) == hash((p, (s, a, b))) for p, s, a, b in cases)
            and all(_span_arith(p, pieces) == hash((p, *pieces)) for p, pieces in spans)
            and all(_key_arith(n, i, m, b) == hash((n, i, m, b)) for n, i, m, b in keys))


def _span_arith(parent: int, pieces: list[tuple[int, int, int]]) -> int:
    """hash((parent, *pieces)) by the arithmetic (a block spanning runs; `_extend_chain` mixes
    the same lanes in as it walks the runs)."""
    acc = _mix(_XX5, _int_lane(parent))
    for seg, start, end in pieces:
        acc = _mix(acc, _piece_lane(seg, start, end))
    return _signed(_close(acc, 1 + len(pieces)))


def _key_arith(n: int, seg: int, length: int, block_size: int) -> int:
    """hash((n, seg, length, block_size)) by the arithmetic (the chain memo's key)."""
    acc = _mix(_mix(_mix(_mix(_XX5, _int_lane(n)), _int_lane(seg)), _int_lane(length)), _int_lane(block_size))
    return _signed(_close(acc, 4))


FAST: bool = COMPILED and _self_check()


def hashing_by_arithmetic() -> bool:
    """True when block hashes come from the arithmetic (the compiled module passed its check)."""
    return FAST

Chain = array                        # array('q') of a prefix's block hashes
EMPTY_CHAIN: Chain = array("q")      # shared by every prompt without shared segments: never extended


# Memoised chains: hash((number of segments, last segment id, its length, block size)) ->
# (segments, hashes, their tokens).  The key is the hash of four ints (compiled, by the arithmetic: no tuple),
# cheap where hashing the segment list itself (a conversation's whole history) is not; the
# stored segments are compared before a chain is used, so two lists that share a key only
# displace each other.  A plain dict (compiled, its operations are C calls;
# an OrderedDict's are Python method calls): a chain used again is re-inserted at the end, and
# when the memo is full the older half is dropped at once (`_trim`), which also compacts the
# dead slots that many deletions leave at the front of a dict.
_CHAINS: dict[int, tuple[tuple[tuple[int, int], ...], Chain, int]] = {}
_CHAINS_MAX = 8192       # recent chains kept (a session's next turn extends its previous one)


def _memo_key(segments: tuple[tuple[int, int], ...], n: int, block_size: int) -> int:
    last = segments[n - 1]
    if FAST:
        return _key_arith(n, last[0], last[1], block_size)
    return hash((n, last[0], last[1], block_size))


def clear_chain_memo() -> None:
    """Forget every memoised chain (tests; compiled, the memo is a C global), lent ones too."""
    _CHAINS.clear()
    _LENT.clear()


def _trim(memo: dict[int, Any]) -> None:
    """Keep the newer half of `memo` (insertion order: the most recently stored last)."""
    items = list(memo.items())
    memo.clear()
    memo.update(items[len(items) // 2:])


def _same_head(stored: tuple[tuple[int, int], ...], segments: tuple[tuple[int, int], ...], n: int) -> bool:
    """stored == segments[:n] (stored has n entries); a session's turns share the entry objects."""
    for i in range(n):
        a = stored[i]
        b = segments[i]
        if a is not b and a != b:
            return False
    return True


def shared_prefix_hashes(segments: tuple[tuple[int, int], ...], block_size: int) -> Chain:
    """Hashes of the full blocks that lie wholly inside the shared segments.

    A chain is a pure function of its segments, so chains are memoised, and a segment list whose
    head (all but its last one or two runs: a session's previous turn, `sim.sessions`) was hashed
    before resumes from that chain instead of rehashing the whole conversation."""
    n = len(segments)
    if n == 0:
        return EMPTY_CHAIN
    key = _memo_key(segments, n, block_size)
    hit = _CHAINS.get(key)
    if hit is not None and (hit[0] is segments or _same_head(hit[0], segments, n)):
        return hit[1]
    hashes: Chain = EMPTY_CHAIN
    base_n = 0                       # segments the resumed chain covers, and their tokens: only the
    total = 0                        # new runs are read (a conversation's old ones are cold memory)
    for drop in (2, 1):
        if n > drop:
            head_key = _memo_key(segments, n - drop, block_size)
            head = _CHAINS.get(head_key)
            if head is not None and _same_head(head[0], segments, n - drop):
                hashes = head[1]
                base_n = n - drop
                total = head[2]
                del _CHAINS[head_key]     # superseded: the conversation has moved on
                break
    hashes, total = _resume(hashes, segments, block_size, base_n, total)
    if n > 1:                        # a lone segment (a system prompt, one trace block) is cheap to redo
        if key in _CHAINS:
            del _CHAINS[key]
        elif len(_CHAINS) >= _CHAINS_MAX:
            _trim(_CHAINS)
        _CHAINS[key] = (segments, hashes, total)
    return hashes


def _resume(hashes: Chain, segments: tuple[tuple[int, int], ...], block_size: int, base_n: int,
            base_total: int) -> tuple[Chain, int]:
    """`hashes`, the chain of segments[:base_n] (which hold `base_total` tokens), extended over
    the rest of `segments` (only their runs are read); and the tokens all the segments hold."""
    total = base_total
    for i in range(base_n, len(segments)):
        total += segments[i][1]
    num_blocks = total // block_size
    if num_blocks > len(hashes):
        hashes = _extend_chain(hashes, segments, block_size, num_blocks, base_n, base_total)
    return hashes, total


_ZEROS: Chain = array("q", bytes(8 * 1024))       # a stock of zero hashes (`_zeros`)
_NO_PIECES: list[tuple[int, int, int]] = []       # never appended to (compiled, hashed by arithmetic)


def _zeros(k: int) -> Chain:
    """A chain of `k` zeros: a slice of a shared stock, grown when too short (one allocation,
    where bytes() and frombytes() took two and a method call)."""
    global _ZEROS
    if k > len(_ZEROS):
        _ZEROS = array("q", bytes(16 * k))
    return _ZEROS[:k]


def _extend_chain(head: Chain, segments: tuple[tuple[int, int], ...], bs: int, num_blocks: int,
                  base_n: int = 0, base_total: int = 0) -> Chain:
    """`head` followed by the hashes of blocks len(head) .. num_blocks-1, as a new chain (`head`
    may be a memoised chain other requests hold: never changed): a block inside one run is keyed
    (parent, (segment_id, start, end)); a block spanning runs (parent, piece, piece, ...).
    `head` is the chain of segments[:base_n], which hold `base_total` tokens (0, 0: none)."""
    done = len(head)
    hashes = head + _zeros(num_blocks - done)       # the head copied, then room for the new hashes
    hv = hashes                                     # compiled: a typed view of its memory
    parent = hv[done - 1] if done else 0            # (no negative index: compiled without wraparound)
    i = done
    resume = done * bs                              # find the segment holding the resume point:
    seg_idx, start = base_n, base_total             # back from the head's end (resume <= base_total),
    while start > resume:
        seg_idx -= 1
        start -= segments[seg_idx][1]
    seg_off = resume - start
    while seg_off >= segments[seg_idx][1]:          # then past runs it ends (or empty ones)
        seg_off -= segments[seg_idx][1]
        seg_idx += 1
    remaining = num_blocks - done
    while remaining:
        seg_id, seg_len = segments[seg_idx]
        k = min((seg_len - seg_off - 1) // bs, remaining)   # blocks ending before the run does
        if k > 0:
            off = seg_off
            seg_off += k * bs
            while off < seg_off:     # (a while loop: Cython makes a C loop of no range with a variable step)
                parent = _run_block(parent, seg_id, off, off + bs)
                hv[i] = parent
                i += 1
                off += bs
            remaining -= k
            if not remaining:
                break
        need = bs                                   # a block reaching (or crossing) the run's end:
        # hash((parent, *pieces)): compiled, by `_span_arith`'s arithmetic piece by piece (no list)
        pieces: list[tuple[int, int, int]] = _NO_PIECES if FAST else []
        acc = _mix(_XX5, _int_lane(parent))
        count = 1
        while need:
            seg_id, seg_len = segments[seg_idx]
            take = min(need, seg_len - seg_off)
            if not take:                            # an empty run holds no token of the block
                pass
            elif FAST:
                acc = _mix(acc, _piece_lane(seg_id, seg_off, seg_off + take))
                count += 1
            else:
                pieces.append((seg_id, seg_off, seg_off + take))
            seg_off += take
            need -= take
            if seg_off == seg_len:
                seg_idx += 1
                seg_off = 0
        parent = _signed(_close(acc, count)) if FAST else hash((parent, *pieces))
        hv[i] = parent
        i += 1
        remaining -= 1
    return hashes


def tokens_covered(segment_lists: list[tuple[tuple[int, int], ...]]) -> list[int]:
    """The tokens each segment list covers (its runs' lengths summed): a table's check of 100k
    conversations' segments (`sim.requests_table.RequestTable.check`), compiled a C loop."""
    out: list[int] = []
    for segs in segment_lists:
        total = 0
        for run in segs:
            total += run[1]
        out.append(total)
    return out


# Chains lent from a session's turn to its next (`request_chain`): content key of the lender ->
# (segments, hashes, their tokens, block size).  Each entry is taken by the one request that
# names its lender (`Request.head_key`); a turn whose successor never comes (the run ended, it
# was rejected) leaves its entry, so past _CHAINS_MAX entries the older half goes (`_trim`).
# An entry is used only if its block size and segments match (another run's may be left over).
_LENT: dict[int, tuple[tuple[tuple[int, int], ...], Chain, int, int]] = {}


def _turn_chain(req: Request, block_size: int) -> Chain:
    """The chain of a session's turn (`req.head_key`: its previous turn, whose segments head its
    own; `req.lends_chain`: a next turn will resume from it): resumed from the chain the previous
    turn lent, found by its content key, where `shared_prefix_hashes` finds it by content (reading
    the conversation's newest runs, cold by then, to make a key, then probing a large memo).
    A previous turn that lent nothing (never scheduled) or whose segments do not head this turn's
    leaves the whole chain to be hashed; the hashes are the same either way."""
    segments = req.segments
    n = len(segments)
    hashes: Chain = EMPTY_CHAIN
    base_n = 0
    total = 0
    if req.head_key >= 0:
        head = _LENT.pop(req.head_key, None)
        if (head is not None and head[3] == block_size and len(head[0]) <= n
                and _same_head(head[0], segments, len(head[0]))):
            hashes = head[1]
            base_n = len(head[0])
            total = head[2]
    hashes, total = _resume(hashes, segments, block_size, base_n, total)
    if req.lends_chain:
        if len(_LENT) >= _CHAINS_MAX:
            _trim(_LENT)
        _LENT[req.content_key] = (segments, hashes, total, block_size)
    return hashes


def request_chain(req: Request, block_size: int) -> Chain:
    """The hashes of the request's blocks of shared segments, made once and kept on it."""
    chain = req.prefix_hashes
    if chain is None:
        if not req.segments:
            chain = EMPTY_CHAIN
        elif req.head_key >= 0 or req.lends_chain:
            chain = _turn_chain(req, block_size)
        else:
            chain = shared_prefix_hashes(req.segments, block_size)
        req.prefix_hashes = chain
    return chain


def block_hash(req: Request, index: int, block_size: int) -> int:
    """Hash of the request's full block `index` (caller guarantees the block is full)."""
    shared = request_chain(req, block_size)
    if index < len(shared):
        return shared[index]
    if (index + 1) * block_size <= req.num_prompt_tokens:
        return hash((1, req.content_key, index))
    return hash((2, req.output_key, index))
