"""Per-request block tables on top of the block pool: prefix-cache lookup, slot allocation, free.

Follows vLLM 0.32 `KVCacheManager` with one full-attention KV-cache group
(vllm/v1/core/kv_cache_manager.py `get_computed_blocks`, `allocate_slots`, `free`;
vllm/v1/core/single_type_kv_cache_manager.py `FullAttentionManager.find_longest_cache_hit`,
`get_num_blocks_to_allocate`, `allocate_new_blocks`, `cache_blocks`):

* a prefix hit is the longest run of cached full blocks, capped at `num_tokens - 1` tokens so
  the last prompt token is always recomputed (its logits are needed);
* `allocate_slots` first refuses when the blocks needed (new blocks + hit blocks that must leave
  the free queue, + the watermark for waiting requests when others run) exceed the free blocks;
  with `full_sequence_must_fit` (vLLM's `scheduler_reserve_full_isl`, default on) a waiting
  request is admitted only if its whole current sequence fits, not just the first chunk;
* after allocating it registers every block that became full (`num_tokens_to_cache =
  min(computed + new, num_tokens)`) in the prefix cache;
* `free` returns the blocks tail-first, so a request's later blocks are evicted before its prefix.
"""

from __future__ import annotations

from sim.block_hash import block_hash
from sim.block_pool import BlockPool
from sim.request import Request, Status


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class KVCacheManager:
    """Block tables of all requests of one replica."""

    def __init__(self, num_gpu_blocks: int, block_size: int, enable_caching: bool,
                 max_model_len: int, watermark: float = 0.0):
        self.pool = BlockPool(num_gpu_blocks, enable_caching)
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.max_model_len = max_model_len
        self.watermark_blocks = int(watermark * num_gpu_blocks)
        self.num_blocks_held = 0          # sum over requests of len(block_ids) (shared counted per owner)
        # prefix-cache statistics (vLLM PrefixCacheStats, first admissions only)
        self.prefix_queries_tokens = 0
        self.prefix_hits_tokens = 0

    # ------------------------------------------------------------------ prefix cache lookup
    def get_computed_blocks(self, req: Request) -> tuple[list[int], int]:
        """Longest cached prefix of full blocks: (block ids, number of tokens)."""
        if not self.enable_caching:
            return [], 0
        bs = self.block_size
        max_blocks = (req.num_prompt_tokens + req.num_output - 1) // bs
        lookup = self.pool.lookup
        hits: list[int] = []
        for i in range(max_blocks):
            b = lookup(block_hash(req, i, bs))
            if b is None:
                break
            hits.append(b)
        return hits, len(hits) * bs

    def record_prefix_stats(self, req: Request, num_hit_tokens: int) -> None:
        if not self.enable_caching or req.num_preemptions > 0:
            return
        self.prefix_queries_tokens += req.num_prompt_tokens + req.num_output
        self.prefix_hits_tokens += num_hit_tokens

    # ------------------------------------------------------------------ allocation
    def _blocks_to_allocate(self, req: Request, num_tokens: int, new_computed: list[int]) -> int:
        need = max(cdiv(num_tokens, self.block_size) - len(new_computed) - len(req.block_ids), 0)
        if new_computed:
            ref = self.pool.ref_cnt
            need += sum(1 for b in new_computed if ref[b] == 0)
        return need

    def allocate_slots(self, req: Request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       new_computed: list[int] | None = None, full_sequence_must_fit: bool = False,
                       has_scheduled_reqs: bool = True) -> bool:
        """Give `req` slots for `num_new_tokens` more tokens (after adopting `new_computed` hit
        blocks).  Returns False, changing nothing, when the pool cannot supply them."""
        new_computed = new_computed or []
        pool = self.pool
        num_tokens = req.num_prompt_tokens + req.num_output
        total_computed = min(req.num_computed + num_new_computed_tokens, self.max_model_len)
        watermark = 0
        if has_scheduled_reqs and req.status in (Status.WAITING, Status.PREEMPTED):
            watermark = self.watermark_blocks
        free = len(pool.free)
        if full_sequence_must_fit:
            full = min(num_tokens, self.max_model_len)
            if self._blocks_to_allocate(req, full, new_computed) + watermark > free:
                return False
        need_slot = min(total_computed + num_new_tokens, self.max_model_len)
        if self._blocks_to_allocate(req, need_slot, new_computed) + watermark > free:
            return False
        if new_computed:
            pool.touch(new_computed)
            req.block_ids.extend(new_computed)
            req.num_cached_blocks = len(req.block_ids)
            self.num_blocks_held += len(new_computed)
        n_new = cdiv(need_slot, self.block_size) - len(req.block_ids)
        if n_new > 0:
            req.block_ids.extend(pool.get_new_blocks(n_new))
            self.num_blocks_held += n_new
        if self.enable_caching:
            self.cache_blocks(req, min(total_computed + num_new_tokens, num_tokens))
        return True

    def cache_blocks(self, req: Request, num_tokens: int) -> None:
        """Register the request's newly full blocks (up to `num_tokens`) in the prefix cache."""
        bs = self.block_size
        full = num_tokens // bs
        start = req.num_cached_blocks
        if full <= start:
            return
        ids = req.block_ids
        cache = self.pool.cache_block
        for i in range(start, full):
            cache(ids[i], block_hash(req, i, bs))
        req.num_cached_blocks = full

    def append_block(self, req: Request) -> bool:
        """Decode fast path: one more block for a request whose last block is full."""
        pool = self.pool
        if not pool.free:
            return False
        req.block_ids.extend(pool.get_new_blocks(1))
        self.num_blocks_held += 1
        return True

    def free(self, req: Request) -> None:
        """Release all of the request's blocks, tail first (vLLM `SingleTypeKVCacheManager.free`)."""
        ids = req.block_ids
        if ids:
            self.num_blocks_held -= len(ids)
            self.pool.free_blocks(ids[::-1])
            req.block_ids = []
        req.num_cached_blocks = 0

    @property
    def usage(self) -> float:
        return self.pool.usage

    # ------------------------------------------------------------------ observability
    def state_fractions(self, computed: int) -> tuple[float, float, float, float, float]:
        """(kv_cache_usage, token-state, internal-fragmentation, reserved, cached-free) as
        fractions of the pool's token slots, given the running requests' computed tokens.
        Internal fragmentation = allocated slots past each request's computed tokens (its last,
        partly filled block); paging reserves nothing ahead."""
        pool = self.pool
        bs = self.block_size
        slots = (pool.num_blocks - 1) * bs
        used_blocks = pool.num_blocks - 1 - len(pool.free)
        internal = self.num_blocks_held * bs - computed
        token_state = used_blocks * bs - internal
        return (used_blocks / (pool.num_blocks - 1), token_state / slots, internal / slots, 0.0,
                pool.num_cached_free * bs / slots)

    def check_invariants(self, running: list[Request], waiting: object) -> None:
        """Allocator invariants plus: ref counts equal the number of request owners."""
        self.pool.check_invariants()
        owners = [0] * self.pool.num_blocks
        for r in running:
            for b in r.block_ids:
                owners[b] += 1
        for b in range(1, self.pool.num_blocks):
            assert owners[b] == self.pool.ref_cnt[b], f"block {b}: ref count {self.pool.ref_cnt[b]} != owners {owners[b]}"
        assert sum(len(r.block_ids) for r in running) == self.num_blocks_held, "held-block counter drifted"
