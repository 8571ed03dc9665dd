"""Contiguous-reservation KV allocators: the baselines of the vLLM paper (Kwon et al., SOSP'23, §3
and Fig. 2), beside paging, so that fragmentation can be compared.

Systems before PagedAttention (FasterTransformer, Orca) store a request's KV cache in one
contiguous chunk reserved when the request is admitted, sized for the longest it may become:

* `contiguous-max`    reserves `max_model_len` token slots (what a system that does not know the
                      output length must do);
* `contiguous-pow2`   the next power of two of the request's final length (prompt + max_tokens),
                      at most `max_model_len` (the paper's "Orca (Pow2)");
* `contiguous-oracle` exactly its final length ("Orca (Oracle)": the output length known ahead).

The KV memory is a linear space of `num_gpu_blocks * block_size` token slots (the same bytes as the
paged pool; no null block).  Reservations are placed first-fit and freeing coalesces neighbours.
A reservation never grows, so a running request is never preempted; a request that finds no hole
large enough waits (FCFS: it blocks the queue, as admission does in vLLM).  With enough free slots
in total but no hole large enough, the free memory is *externally* fragmented.

What each slot holds (`state_fractions`, time-averaged by the recorder), in the paper's words:
token states (computed tokens of running requests), *reserved* (slots for tokens the request will
still produce), *internal fragmentation* (slots reserved beyond the final length: never used),
and *external fragmentation* (free slots outside the largest hole: unusable by any request larger
than that hole).

The manager offers the surface `sim.scheduler_v1.SchedulerV1` uses of `KVCacheManager`, with a
scheduler "block" of one token: a request's `nblocks` is its reservation, so it never needs
another block before it finishes and the v1 scheduler runs unchanged (token budget, chunked
prefill, `max_num_seqs`, async scheduling).  No prefix caching (config refuses it).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from sim.request import Request

MODES = ("contiguous-max", "contiguous-pow2", "contiguous-oracle")


@dataclass(slots=True)
class _NoBlocks:
    """The scheduler reads `pool.nfree` only when a running request needs more blocks, which a
    reservation never does; it stays at a value no demand can exceed."""

    nfree: int = 1 << 62


def reservation_tokens(mode: str, final_len: int, max_model_len: int, capacity: int | None = None) -> int:
    """Token slots reserved for a request whose prompt + output is `final_len` tokens (pow2: at most
    `max_model_len` and the whole cache, so a request that fits the cache can always be placed)."""
    if mode == "contiguous-max":
        return max_model_len
    if mode == "contiguous-pow2":
        cap = max_model_len if capacity is None else min(max_model_len, capacity)
        return min(1 << max(final_len - 1, 0).bit_length(), cap)
    if mode == "contiguous-oracle":
        return final_len
    raise ValueError(f"unknown contiguous allocator {mode!r}")


class ContiguousKVManager:
    """First-fit contiguous reservations in a linear KV space of token slots."""

    def __init__(self, num_gpu_blocks: int, page_tokens: int, mode: str, max_model_len: int):
        if mode not in MODES:
            raise ValueError(f"unknown contiguous allocator {mode!r}")
        self.mode = mode
        self.capacity = num_gpu_blocks * page_tokens     # token slots
        if mode == "contiguous-max" and max_model_len > self.capacity:
            raise ValueError(f"contiguous-max reserves max_model_len ({max_model_len}) tokens per request but the "
                             f"KV cache holds {self.capacity}; lower engine.max_model_len")
        self.max_model_len = max_model_len
        self.block_size = 1                              # the scheduler's arithmetic is in tokens
        self.enable_caching = False
        self.pool = _NoBlocks()
        self.hole_starts: list[int] = [0]                # free holes, sorted by start
        self.hole_lens: list[int] = [self.capacity]
        self.regions: dict[int, tuple[int, int]] = {}    # req_id -> (start, length)
        self.reserved_slots = 0
        self.final_slots = 0                             # sum of final lengths of holders
        self.num_blocks_held = 0
        self.prefix_queries_tokens = 0
        self.prefix_hits_tokens = 0

    # ------------------------------------------------------------------ the v1 surface
    def get_computed_blocks(self, req: Request) -> tuple[int, int]:
        return 0, 0

    def record_prefix_stats(self, req: Request, num_hit_tokens: int) -> None:
        return None

    def allocate_slots(self, req: Request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       num_hits: int = 0, full_sequence_must_fit: bool = False,
                       has_scheduled_reqs: bool = True) -> bool:
        """A running request always has room (its reservation covers its final length); a new one
        gets its region first-fit, or False (nothing changes) when no hole is large enough."""
        if req.req_id in self.regions:
            return True
        final = req.num_prompt_tokens + req.max_tokens
        size = reservation_tokens(self.mode, final, self.max_model_len, self.capacity)
        i = next((k for k, ln in enumerate(self.hole_lens) if ln >= size), -1)
        if i < 0:
            return False
        start = self.hole_starts[i]
        if self.hole_lens[i] == size:
            del self.hole_starts[i]
            del self.hole_lens[i]
        else:
            self.hole_starts[i] = start + size
            self.hole_lens[i] -= size
        self.regions[req.req_id] = (start, size)
        req.reserved_tokens = size
        req.nblocks = size                               # one scheduler "block" per token slot
        self.reserved_slots += size
        self.final_slots += final
        self.num_blocks_held += size
        return True

    def append_blocks(self, reqs: list[Request]) -> None:
        raise AssertionError("a contiguous reservation never grows")

    def append_blocks_n(self, req: Request, k: int) -> None:
        raise AssertionError("a contiguous reservation never grows")

    def cache_blocks(self, req: Request, num_tokens: int) -> None:
        return None

    def free(self, req: Request) -> None:
        """Release the request's region, merging it with free neighbours."""
        region = self.regions.pop(req.req_id, None)
        if region is None:
            return
        start, size = region
        self.reserved_slots -= size
        self.final_slots -= req.num_prompt_tokens + req.max_tokens
        self.num_blocks_held -= size
        req.nblocks = 0
        req.reserved_tokens = 0
        starts, lens = self.hole_starts, self.hole_lens
        i = bisect_left(starts, start)
        if i > 0 and starts[i - 1] + lens[i - 1] == start:        # merge with the hole before
            i -= 1
            lens[i] += size
        else:
            starts.insert(i, start)
            lens.insert(i, size)
        if i + 1 < len(starts) and starts[i] + lens[i] == starts[i + 1]:   # and the one after
            lens[i] += lens[i + 1]
            del starts[i + 1]
            del lens[i + 1]

    # ------------------------------------------------------------------ observability
    @property
    def usage(self) -> float:
        return self.reserved_slots / self.capacity

    def usage_fraction(self) -> float:
        """state_fractions' first element (the KV manager's interface)."""
        return self.usage

    def external_fragmentation(self) -> float:
        """Free slots outside the largest hole, as a fraction of all slots."""
        if not self.hole_lens:
            return 0.0
        return (sum(self.hole_lens) - max(self.hole_lens)) / self.capacity

    def state_fractions(self, computed: int) -> tuple[float, float, float, float, float, float]:
        """(usage, token states, internal fragmentation, reserved, cached-free, external
        fragmentation) as fractions of the KV slots, given the holders' computed tokens."""
        cap = self.capacity
        return (self.usage, computed / cap, (self.reserved_slots - self.final_slots) / cap,
                (self.final_slots - computed) / cap, 0.0, self.external_fragmentation())

    def check_invariants(self, running: list[Request], waiting: object) -> None:
        """Regions and holes tile the space without overlap; counters match the holders."""
        spans = sorted([*self.regions.values(), *zip(self.hole_starts, self.hole_lens, strict=True)])
        pos = 0
        for start, size in spans:
            assert start == pos and size > 0, f"gap or overlap at slot {pos} (next span starts at {start})"
            pos = start + size
        assert pos == self.capacity, "regions and holes do not cover the KV space"
        for a, b in zip(self.hole_starts, self.hole_starts[1:], strict=False):
            assert a < b, "holes out of order"
        for (s0, l0), s1 in zip(zip(self.hole_starts, self.hole_lens, strict=True), self.hole_starts[1:], strict=False):
            assert s0 + l0 < s1, "adjacent holes were not merged"
        assert {r.req_id for r in running} == set(self.regions), "a running request without a region, or the reverse"
        assert sum(size for _, size in self.regions.values()) == self.reserved_slots, "reserved-slot counter drifted"
