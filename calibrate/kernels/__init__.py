"""Triton kernels for paged attention over a vLLM-layout KV cache, and their PyTorch reference.

The cache of one layer is two tensors `[num_blocks, block_size, num_kv_heads, head_dim]` (K and V),
indexed through a per-sequence block table of physical block ids, exactly as vLLM lays it out.
`decode.paged_decode_attention` handles one new token per sequence (split-KV for long contexts);
`prefill.paged_prefill_attention` handles a chunk of new tokens against a paged prefix.

These kernels exist so that `pagesim calibrate` can time realistic attention on the target GPU; they
are correct (tested against `reference.py` through Triton's CPU interpreter) but not a serving engine.
"""

from __future__ import annotations

import os

KV_DTYPES = ("fp16", "bf16", "fp8", "int8")


def is_interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (`TRITON_INTERPRET=1`, read at import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
