"""Requests waiting for KV blocks loaded from the offload tiers (`sim.kv_offload`), in the v1
scheduler (`sim.scheduler_v1.SchedulerV1`): vLLM 0.32's WAITING_FOR_REMOTE_KVS.  A request whose
prefix is found in the CPU (or disk) tier is admitted with its local and external hits allocated
and skipped until its load is done; then it goes back to the front of the waiting queue with
those tokens computed.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from sim.request import Request

if TYPE_CHECKING:
    from sim.scheduler_v1 import SchedulerV1


def start_load(s: SchedulerV1, req: Request, num_hits: int, hit_tokens: int, keys: list[int],
                n_cpu: int, n_disk: int) -> bool:
    """Admit `req` to wait for its offloaded blocks (vLLM: allocate the local + external hit,
    status WAITING_FOR_REMOTE_KVS, skip it this step).  False: its blocks do not fit."""
    kv = s.kv
    off = s.offload
    assert off is not None
    ext = (n_cpu + n_disk) * kv.block_size
    if not kv.allocate_slots(req, ext, hit_tokens, num_hits,  # type: ignore[call-arg]
                             full_sequence_must_fit=s.limits.scheduler_reserve_full_isl,
                             has_scheduled_reqs=bool(s.running_map), delay_cache_blocks=True):
        return False
    kv.record_prefix_stats(req, hit_tokens)
    s.waiting.popleft()
    if req.prefix_hit_tokens < 0:
        req.prefix_hit_tokens = hit_tokens
    req.num_computed = hit_tokens + ext
    ready = off.load(keys, n_cpu, n_disk, s.now_s)
    heapq.heappush(s.loading, (ready, s._seq, req))
    s._seq += 1
    return True


def finish_loads(s: SchedulerV1) -> None:
    """Loads done by now go back to the front of the waiting queue with their tokens computed
    (vLLM `_update_waiting_for_remote_kv`: cache the loaded blocks; a whole-sequence hit
    recomputes its last token)."""
    done: list[Request] = []
    loading = s.loading
    while loading and loading[0][0] <= s.now_s:
        done.append(heapq.heappop(loading)[2])
    kv = s.kv
    for req in reversed(done):
        if kv.enable_caching:
            kv.cache_blocks(req, req.num_computed, offer=False)  # type: ignore[call-arg]
        if req.num_computed == req.num_prompt_tokens + req.num_output:
            req.num_computed -= 1
        s.waiting.appendleft(req)
