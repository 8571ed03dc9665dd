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
"""

from __future__ import annotations

from collections import OrderedDict

from sim.request import Request

# (segments, block size) -> hashes; oldest first.  An OrderedDict: dropping the oldest is O(1)
# (next(iter(dict)) after many deletions scans the dead slots at the front of a plain dict).
_CHAINS: OrderedDict[tuple[tuple[tuple[int, int], ...], int], list[int]] = OrderedDict()
_CHAINS_MAX = 8192       # recent chains kept (a session's next turn extends its previous one)


def shared_prefix_hashes(segments: tuple[tuple[int, int], ...], block_size: int) -> list[int]:
    """Hashes of the full blocks that lie wholly inside the shared segments.

    A chain is a pure function of its segments, so chains are memoised, and a segment list whose
    head (all but its last one or two runs: a session's previous turn, `sim.sessions`) was hashed
    before resumes from that chain instead of rehashing the whole conversation."""
    key = (segments, block_size)
    hit = _CHAINS.get(key)
    if hit is not None:
        return hit
    hashes: list[int] = []
    for drop in (2, 1):
        if len(segments) > drop:
            head = _CHAINS.get((segments[:-drop], block_size))
            if head is not None:
                hashes = list(head)
                break
    total = sum(length for _, length in segments)
    num_blocks = total // block_size
    if num_blocks > len(hashes):
        _extend_chain(hashes, segments, block_size, num_blocks)
    if len(segments) > 1:            # a lone segment (a system prompt, one trace block) is cheap to redo
        if len(_CHAINS) >= _CHAINS_MAX:
            _CHAINS.popitem(last=False)
        _CHAINS[key] = hashes
    return hashes


def _extend_chain(hashes: list[int], segments: tuple[tuple[int, int], ...], bs: int, num_blocks: int) -> None:
    """Append the hashes of blocks len(hashes) .. num_blocks-1: a block inside one run is keyed
    (parent, (segment_id, start, end)); a block spanning runs (parent, piece, piece, ...)."""
    parent = hashes[-1] if hashes else 0
    seg_idx, seg_off = 0, len(hashes) * bs         # find the segment holding the resume point
    while seg_off >= segments[seg_idx][1]:
        seg_off -= segments[seg_idx][1]
        seg_idx += 1
    append = hashes.append
    remaining = num_blocks - len(hashes)
    while remaining:
        seg_id, seg_len = segments[seg_idx]
        k = min((seg_len - seg_off - 1) // bs, remaining)   # blocks ending before the run does
        if k > 0:
            for off in range(seg_off, seg_off + k * bs, bs):
                parent = hash((parent, (seg_id, off, off + bs)))
                append(parent)
            seg_off += k * bs
            remaining -= k
            if not remaining:
                break
        need = bs                                   # a block reaching (or crossing) the run's end
        pieces: list[tuple[int, int, int]] = []
        while need:
            seg_id, seg_len = segments[seg_idx]
            take = min(need, seg_len - seg_off)
            pieces.append((seg_id, seg_off, seg_off + take))
            seg_off += take
            need -= take
            if seg_off == seg_len:
                seg_idx += 1
                seg_off = 0
        parent = hash((parent, *pieces))
        append(parent)
        remaining -= 1


def block_hash(req: Request, index: int, block_size: int) -> int:
    """Hash of the request's full block `index` (caller guarantees the block is full)."""
    shared = req.prefix_hashes
    if shared is None:
        shared = req.prefix_hashes = shared_prefix_hashes(req.segments, block_size) if req.segments else []
    if index < len(shared):
        return shared[index]
    if (index + 1) * block_size <= req.num_prompt_tokens:
        return hash((1, req.content_key, index))
    return hash((2, req.output_key, index))
