"""Shared fixtures: an rng, request factories, a small v1 scheduler."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_TRACES = ROOT.parent / "shared" / "traces"
sys.path.insert(0, str(ROOT))

from sim.kv_cache_manager import KVCacheManager  # noqa: E402
from sim.request import Request  # noqa: E402
from sim.scheduler_v1 import SchedulerLimits, SchedulerV1  # noqa: E402

_ids = itertools.count(1000)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def make_request(prompt: int, output: int, req_id: int | None = None, segments=(), arrival_s: float = 0.0) -> Request:
    rid = next(_ids) if req_id is None else req_id
    return Request(rid, arrival_s, prompt, output, tuple(segments), content_key=rid, parent_id=rid)


def make_scheduler(num_blocks: int, block_size: int = 16, *, max_num_seqs: int = 256,
                   max_num_batched_tokens: int = 2048, caching: bool = False, chunked: bool = True,
                   max_model_len: int = 8192, async_scheduling: bool = False, threshold: int = 0,
                   reserve_full_isl: bool = True) -> SchedulerV1:
    kv = KVCacheManager(num_blocks, block_size, caching, max_model_len)
    lim = SchedulerLimits(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                          max_model_len=max_model_len, enable_chunked_prefill=chunked,
                          long_prefill_token_threshold=threshold, scheduler_reserve_full_isl=reserve_full_isl,
                          async_scheduling=async_scheduling)
    return SchedulerV1(lim, kv, record_schedule=True)
