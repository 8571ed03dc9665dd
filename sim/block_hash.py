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

from sim.request import Request


def shared_prefix_hashes(segments: tuple[tuple[int, int], ...], block_size: int) -> list[int]:
    """Hashes of the full blocks that lie wholly inside the shared segments."""
    total = sum(length for _, length in segments)
    num_blocks = total // block_size
    hashes: list[int] = []
    if num_blocks == 0:
        return hashes
    parent = 0
    seg_idx, seg_off = 0, 0          # current segment and offset inside it
    for _ in range(num_blocks):
        need = block_size
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
        hashes.append(parent)
    return hashes


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
