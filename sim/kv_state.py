"""What a replica's KV memory holds at one instant, as fractions of its token slots.

`KVState` = (kv_cache_usage, token_state, internal_frag, reserved, cached_free, external_frag):

* kv_cache_usage — vLLM's `kv_cache_usage_perc` (blocks in use / usable blocks; reserved slots /
  all slots for the contiguous baselines);
* token_state    — slots holding computed tokens of running requests;
* internal_frag  — slots allocated but never to be used: past the computed tokens in each
  request's last block (paged), beyond the final length (contiguous);
* reserved       — slots set aside for tokens a request will still produce (contiguous only);
* cached_free    — free blocks still holding prefix-cache content;
* external_frag  — free slots outside the largest free hole (contiguous only).
"""

from __future__ import annotations

KVState = tuple[float, float, float, float, float, float]
