"""Per-request block tables on top of the block pool: prefix-cache lookup, slot allocation, free.

Follows vLLM 0.32 `KVCacheManager` with one full-attention KV-cache group
(vllm/v1/core/kv_cache_manager.py `get_computed_blocks`, `allocate_slots`, `free`;
vllm/v1/core/single_type_kv_cache_manager.py `FullAttentionManager.find_longest_cache_hit`,
`get_num_blocks_to_allocate`, `allocate_new_blocks`, `cache_blocks`):

* a prefix hit is the longest run of cached full blocks, capped at `num_tokens - 1` tokens so
  the last prompt token is always recomputed (its logits are needed);
* `allocate_slots` refuses, changing nothing, when the blocks needed (new blocks + hit blocks
  that must leave the free queue, + the watermark for waiting requests when others run) exceed
  the free blocks; with `full_sequence_must_fit` (vLLM's `scheduler_reserve_full_isl`, on by
  default) a waiting request is admitted only if its whole current sequence fits;
* after allocating, every block that became full (`min(computed + new, num_tokens)`) is
  registered in the prefix cache;
* `free` returns the blocks tail first, so a request's later blocks are evicted before its prefix.

Block content and hashes: see `sim.block_hash`.  Blocks whose content another request can share
(shared prompt segments; the whole prompt of a parallel-sampling request) get public hashes;
the rest get a private token only their own sequence can match after a preemption.
"""

from __future__ import annotations

import numpy as np

from sim.block_hash import block_hash, request_chain
from sim.block_pool import BlockPool
from sim.kv_offload import KVOffload
from sim.kv_state import KVState
from sim.lru_tier import own_key_base
from sim.request import Request, Status

PRIVATE_SHIFT = 1 << 24


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _usage(num_blocks: int, nfree: int) -> float:
    """vLLM's kv_cache_usage: the share of the pool's blocks (less the null block) not free."""
    return (num_blocks - 1 - nfree) / (num_blocks - 1)


class KVCacheManager:
    """Block tables of all requests of one replica."""

    def __init__(self, num_gpu_blocks: int, block_size: int, enable_caching: bool,
                 max_model_len: int, watermark: float = 0.0):
        self.pool = BlockPool(num_gpu_blocks, enable_caching)
        self.num_blocks = num_gpu_blocks  # the pool's (read every step: an attribute of the compiled pool costs a lookup)
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.max_model_len = max_model_len
        self.watermark_blocks = int(watermark * num_gpu_blocks)
        self.num_blocks_held = 0          # sum over requests of their table lengths
        self.shared_content: set[int] = set()   # content keys of parallel-sampling prompts
        self.prefix_queries_tokens = 0    # vLLM PrefixCacheStats, first admissions only
        self.prefix_hits_tokens = 0
        self.spec_slack_tokens = 0        # spec decode: slots a table may need past the sequence (drafts + lookahead)
        self.offload: KVOffload | None = None   # CPU / disk tiers below the prefix cache (sim.kv_offload)

    # ------------------------------------------------------------------ content
    def _num_public(self, req: Request) -> int:
        if req.num_public_blocks < 0:
            bs = self.block_size
            if req.content_key in self.shared_content:
                req.num_public_blocks = req.num_prompt_tokens // bs
            else:
                req.num_public_blocks = len(request_chain(req, bs))
        return req.num_public_blocks

    def _ensure_table(self, req: Request) -> np.ndarray:
        if req.blocks is None:
            cap = cdiv(req.num_prompt_tokens + req.max_tokens + self.spec_slack_tokens, self.block_size) + 1
            req.blocks = np.zeros(cap, dtype=np.intp)     # intp: fast fancy indexing
        return req.blocks

    # ------------------------------------------------------------------ prefix cache lookup
    def get_computed_blocks(self, req: Request) -> tuple[int, int]:
        """Longest cached prefix of full blocks (vLLM `get_computed_blocks`): (number of blocks,
        number of tokens).  The blocks are written into the head of the request's block table
        (a request looked up is waiting and holds none), where `allocate_slots` adopts them."""
        if not self.enable_caching:
            return 0, 0
        bs = self.block_size
        max_blocks = (req.num_prompt_tokens + req.num_output - 1) // bs
        n_pub = min(self._num_public(req), max_blocks)
        k = 0                                    # nothing shareable: no lookup (private blocks below)
        if n_pub > 0:
            table = self._ensure_table(req)
            chain = req.prefix_hashes
            if chain is not None and len(chain) >= n_pub:
                k = self.pool.hit_into(table, chain, n_pub)
            else:
                k = self.pool.hit_into(table, [block_hash(req, i, bs) for i in range(n_pub)], n_pub)
        if k == n_pub:
            # the sequence's own private blocks, still cached after a preemption: already in
            # its table where they go, from its previous life
            m = min(max_blocks, req.prev_nblocks)
            if m > n_pub and req.blocks is not None:
                old = req.blocks[n_pub:m]
                want = -((req.req_id + 1) * PRIVATE_SHIFT + np.arange(n_pub, m, dtype=np.int64))
                ok = self.pool.hash_of[old] == want
                k += int(np.argmin(ok)) if np.count_nonzero(ok) < ok.size else int(ok.size)
        return k, k * bs

    def _prompt_keys(self, req: Request, start: int, end: int) -> list[int]:
        """Offload keys of full prompt blocks start <= i < end: the chained hash of a block of
        shared segments (as `block_hash`), else `own_key_base(content_key) - i` for content unique
        to the prompt (and its parallel-sampling siblings) — a key made without hashing, distinct
        per (content, block) below 2**20 blocks, in bulk at C speed."""
        shared = request_chain(req, self.block_size)
        n = len(shared)
        if end <= n:
            return shared[start:end].tolist()
        base = own_key_base(req.content_key)
        tail = list(range(base - max(start, n), base - end, -1))
        return shared[start:n].tolist() + tail if start < n else tail

    def offload_lookup(self, req: Request, num_gpu_hit_tokens: int) -> tuple[list[int], int, int]:
        """The connector's hit after the GPU prefix hit (vLLM `get_num_new_matched_tokens`): the keys
        of the full prompt blocks past the GPU hit, and how many of them the CPU and disk tiers
        hold as an unbroken run (see `KVOffload.lookup`)."""
        off = self.offload
        assert off is not None
        bs = self.block_size
        start = num_gpu_hit_tokens // bs
        end = req.num_prompt_tokens // bs
        if end <= start:
            return [], 0, 0
        shared = request_chain(req, self.block_size)
        off.query_blocks += end - start
        return off.lookup_prompt(shared, own_key_base(req.content_key), start, end)

    def record_prefix_stats(self, req: Request, num_hit_tokens: int) -> None:
        if not self.enable_caching or req.num_preemptions > 0:
            return
        self.prefix_queries_tokens += req.num_prompt_tokens + req.num_output
        self.prefix_hits_tokens += num_hit_tokens

    # ------------------------------------------------------------------ allocation
    def _blocks_to_allocate(self, req: Request, num_tokens: int, num_hits: int, num_hits_free: int) -> int:
        """New blocks for `num_tokens` after adopting `num_hits` hit blocks, plus the hit blocks
        that must leave the free queue (`num_hits_free`: those with ref count 0)."""
        return max(cdiv(num_tokens, self.block_size) - num_hits - req.nblocks, 0) + num_hits_free

    def allocate_slots(self, req: Request, num_new_tokens: int, num_new_computed_tokens: int = 0,
                       num_hits: int = 0, full_sequence_must_fit: bool = False,
                       has_scheduled_reqs: bool = True, num_lookahead_tokens: int = 0,
                       delay_cache_blocks: bool = False) -> bool:
        """Give `req` slots for `num_new_tokens` more tokens (after adopting the `num_hits` hit
        blocks `get_computed_blocks` wrote into its table), plus `num_lookahead_tokens` (spec
        decode: the drafter's KV), as vLLM's `allocate_slots`.
        Returns False, changing nothing, when the pool cannot supply them.  `delay_cache_blocks`:
        the new tokens are being loaded from the offload tiers; their blocks are registered when
        the load is done (vLLM's delay_cache_blocks)."""
        pool = self.pool
        num_tokens = req.num_prompt_tokens + req.num_output
        total_computed = min(req.num_computed + num_new_computed_tokens, self.max_model_len)
        watermark = 0
        if has_scheduled_reqs and req.status in (Status.WAITING, Status.PREEMPTED):
            watermark = self.watermark_blocks
        free = pool.nfree
        table = self._ensure_table(req)
        nh_free = pool.count_free(table, req.nblocks, num_hits) if num_hits else 0
        if full_sequence_must_fit:
            if self._blocks_to_allocate(req, min(num_tokens, self.max_model_len), num_hits, nh_free) + watermark > free:
                return False
        need_slot = min(total_computed + num_new_tokens + num_lookahead_tokens, self.max_model_len)
        if self._blocks_to_allocate(req, need_slot, num_hits, nh_free) + watermark > free:
            return False
        if num_hits:
            req.cached_on_admit = True
            pool.adopt(table, req.nblocks, num_hits)   # touched where they lie in the table
            req.nblocks += num_hits
            req.num_cached_blocks = req.nblocks
            self.num_blocks_held += num_hits
            off = self.offload
            if off is not None and not delay_cache_blocks and req.num_preemptions == 0:
                # vLLM offers a request's GPU-hit blocks for storing too
                off.store_many(self._prompt_keys(req, 0, num_hits))
        n_new = cdiv(need_slot, self.block_size) - req.nblocks
        if n_new > 0:
            pool.get_new_blocks_into(table, req.nblocks, n_new)
            req.nblocks += n_new
            self.num_blocks_held += n_new
        if self.enable_caching and not delay_cache_blocks:
            self.cache_blocks(req, min(total_computed + num_new_tokens, num_tokens))
        return True

    def append_blocks(self, reqs: list[Request]) -> None:
        """One more block for each request (decoding past a block boundary), in order."""
        out = self.pool.pop_few(len(reqs))
        for j, req in enumerate(reqs):
            req.blocks[req.nblocks] = out[j]  # type: ignore[index]
            req.nblocks += 1
        self.num_blocks_held += len(reqs)

    def append_blocks_n(self, req: Request, k: int) -> None:
        """`k` more blocks for one running request (its table never needs prefix hits here)."""
        self.pool.get_new_blocks_into(self._ensure_table(req), req.nblocks, k)
        req.nblocks += k
        self.num_blocks_held += k

    def cache_blocks(self, req: Request, num_tokens: int, offer: bool = True) -> None:
        """Register the request's newly full blocks (up to `num_tokens`) in the prefix cache.
        Public blocks enter the hash map now; private ones only move the request's cached-block
        count, and get their hashes when the request frees them (nobody else could hit them).
        With offload tiers, newly full prompt blocks are offered to the CPU tier (unless `offer`
        is False: blocks that were just loaded from it)."""
        full = num_tokens // self.block_size
        start = req.num_cached_blocks
        if full <= start:
            return
        n_pub = self._num_public(req)
        off = self.offload
        if off is not None and offer:
            end = min(full, req.num_prompt_tokens // self.block_size)
            if end > start:
                if req.num_preemptions or req.content_key in self.shared_content:
                    off.store_many(self._prompt_keys(req, start, end))   # stored before maybe: a previous life, a sibling
                else:
                    n = len(request_chain(req, self.block_size))
                    if start < min(n, end):         # shared blocks: maybe stored by another request
                        off.store_many(self._prompt_keys(req, start, min(n, end)))
                    if end > max(start, n):         # the prompt's own blocks, computed for the first time
                        off.store_run(own_key_base(req.content_key), max(start, n), end)
        if start < n_pub:
            table = req.blocks
            assert table is not None
            bs = self.block_size
            shared = req.prefix_hashes
            end = min(full, n_pub)
            if shared is not None and len(shared) >= end:     # the hashes computed up front
                self.pool.cache_public_run(table, shared, start, end)
            else:
                for i in range(start, end):
                    self.pool.cache_public(int(table[i]), block_hash(req, i, bs))
        req.num_cached_blocks = full

    def free(self, req: Request) -> None:
        """Release all of the request's blocks, tail first (vLLM `SingleTypeKVCacheManager.free`)."""
        n = req.nblocks
        if n:
            table = req.blocks
            assert table is not None
            shared = req.num_public_blocks > 0 or req.cached_on_admit
            if self.enable_caching:
                i0 = max(req.num_public_blocks, 0)
                i1 = min(req.num_cached_blocks, n)
                if i1 > i0:           # unshared tables hold blocks fresh from the free queue, never hashed
                    self.pool.set_private_hashes(table[i0:i1], i0, (req.req_id + 1) * PRIVATE_SHIFT, not shared)
            self.num_blocks_held -= n
            self.pool.free_blocks(table[n - 1::-1])
        req.prev_nblocks = n
        req.nblocks = 0
        req.num_cached_blocks = 0

    @property
    def usage(self) -> float:
        return self.pool.usage

    # ------------------------------------------------------------------ observability
    def usage_fraction(self) -> float:
        """vLLM's kv_cache_usage as the step table logs it (state_fractions' first element),
        without the token counts the rest needs."""
        return _usage(self.num_blocks, self.pool.nfree)

    def state_fractions(self, computed: int) -> KVState:
        """(kv_cache_usage, token-state, internal-fragmentation, reserved, cached-free) as
        fractions of the pool's token slots, given the running requests' computed tokens.
        Internal fragmentation = allocated slots past each request's computed tokens (its last,
        partly filled block); paging reserves nothing ahead."""
        pool = self.pool
        bs = self.block_size
        n = self.num_blocks
        nfree = pool.nfree
        slots = (n - 1) * bs
        used_blocks = n - 1 - nfree
        internal = self.num_blocks_held * bs - computed
        token_state = used_blocks * bs - internal
        return (_usage(n, nfree), token_state / slots, internal / slots, 0.0,
                pool.num_cached_free * bs / slots, 0.0)

    def check_invariants(self, running: list[Request], waiting: object) -> None:
        """Allocator invariants plus: ref counts equal the number of request owners."""
        self.pool.check_invariants()
        owners = np.zeros(self.pool.num_blocks, dtype=np.int64)
        for r in running:
            if r.nblocks:
                np.add.at(owners, r.blocks[: r.nblocks], 1)  # type: ignore[index]
        assert np.array_equal(owners[1:], self.pool.ref[1:]), "ref counts differ from the number of owners"
        assert sum(r.nblocks for r in running) == self.num_blocks_held, "held-block counter drifted"
