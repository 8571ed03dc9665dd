"""Drive vLLM's own v1 scheduler on a step clock, with no model, and write its step trace.

Run under vLLM's interpreter (stdlib + vllm only; pagesim is not installed there):

    .venv-vllm/bin/python sim/validate/vllm_driver.py job.json trace.jsonl [job2.json trace2.jsonl ...]

The job (JSON) names the scheduler settings, the step length and the requests; see `load_job`.
What runs is vLLM's code, built the way ``EngineCore.__init__`` builds it:
``VllmConfig`` around a tiny Llama ``config.json`` (no weights, ``skip_tokenizer_init``), KV
cache specs for its layers turned into a ``KVCacheConfig`` by ``get_kv_cache_configs`` (so
``num_gpu_blocks_override`` and the max-model-len capacity check apply as in the engine), the
block hasher ``EngineCore`` installs when prefix caching is on, and ``Scheduler`` or
``AsyncScheduler``.  Each step follows ``EngineCore.step`` (sync) or
``EngineCore.step_with_batch_queue`` (async, batch queue of 2): add the requests that have
arrived, ``schedule()``, make a ``ModelRunnerOutput`` that samples one token for every
request whose scheduled chunk reaches the end of its known tokens (``not is_prefill_chunk``, as
``Scheduler._update_after_schedule`` sets it), then ``update_from_output()``.
Requests carry ``SamplingParams(max_tokens=N, min_tokens=N, ignore_eos=True)``, so each stops
after exactly N tokens; ``n > 1`` fans out like ``vllm/v1/engine/parallel_sampling.py``
(children ``f"{i}_{parent_id}"``, added in index order).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

if __package__:
    from .step_trace import StepRecord, TraceHeader, arrival_step, write_trace
else:  # run as a script: this file's folder is on sys.path
    from step_trace import StepRecord, TraceHeader, arrival_step, write_trace  # type: ignore[no-redef]

#: Job "config" keys, with vLLM's names and (where optional) defaults.
CONFIG_DEFAULTS: dict[str, Any] = {
    "block_size": 16,                    # CacheConfig.block_size
    "num_gpu_blocks_override": None,     # CacheConfig.num_gpu_blocks_override (required)
    "enable_prefix_caching": False,      # CacheConfig.enable_prefix_caching
    "max_num_seqs": 256,                 # SchedulerConfig.max_num_seqs
    "max_num_batched_tokens": 2048,      # SchedulerConfig.max_num_batched_tokens
    "enable_chunked_prefill": True,      # SchedulerConfig.enable_chunked_prefill
    "long_prefill_token_threshold": 0,   # SchedulerConfig.long_prefill_token_threshold
    "max_model_len": 4096,               # ModelConfig.max_model_len
    "async_scheduling": False,           # AsyncScheduler + batch queue of 2 (vLLM's GPU default)
    "policy": "fcfs",                    # SchedulerConfig.policy: fcfs | priority
    "watermark": 0.0,                    # SchedulerConfig.watermark
    "scheduler_reserve_full_isl": True,  # SchedulerConfig.scheduler_reserve_full_isl
}
FIRST_TOKEN_ID = 10                      # synthesized ids start here, clear of special tokens


def load_job(job: dict[str, Any]) -> tuple[dict[str, Any], float, list[dict[str, Any]]]:
    """Validate a job; return (config, step_s, requests sorted by arrival step then job order).

    Job: ``{"step_s": float, "config": {...CONFIG_DEFAULTS keys...}, "requests": [...]}``; a
    request is ``{"id": str, "arrival_step": int | "arrival_s": float, "prompt_token_ids":
    [int] | "prompt_tokens": int, "segments": [[segment_id, num_tokens], ...], "max_tokens":
    int, "n": int, "priority": int}`` (all but max_tokens and a prompt optional)."""
    unknown = set(job) - {"step_s", "config", "requests", "max_steps", "model", "seed"}
    if unknown:
        raise ValueError(f"job: unknown keys {sorted(unknown)}")
    config = dict(CONFIG_DEFAULTS)
    for key, value in job.get("config", {}).items():
        if key not in CONFIG_DEFAULTS:
            raise ValueError(f"job.config.{key}: unknown key; expected one of {sorted(CONFIG_DEFAULTS)}")
        config[key] = value
    if not isinstance(config["num_gpu_blocks_override"], int) or config["num_gpu_blocks_override"] < 2:
        raise ValueError("job.config.num_gpu_blocks_override: required, an int >= 2 (one is vLLM's null block)")
    step_s = float(job.get("step_s", 1.0))
    if not step_s > 0:
        raise ValueError(f"job.step_s: {step_s}: expected a positive number of seconds")
    requests = []
    for i, r in enumerate(job["requests"]):
        rid = str(r.get("id", i))
        if "arrival_step" in r:
            step = int(r["arrival_step"])
        else:
            step = arrival_step(float(r.get("arrival_s", 0.0)), step_s)
        n_prompt = len(r["prompt_token_ids"]) if "prompt_token_ids" in r else int(r["prompt_tokens"])
        if not 1 <= n_prompt < config["max_model_len"]:
            # InputProcessor._validate_prompt_len rejects prompt_len >= max_model_len.
            raise ValueError(f"request {rid}: prompt of {n_prompt} tokens; need 1 <= prompt < max_model_len")
        if int(r["max_tokens"]) < 1:
            raise ValueError(f"request {rid}: max_tokens must be >= 1")
        arrival_s = float(r.get("arrival_s", step * step_s))   # Request.arrival_time: priority ties
        requests.append({**r, "id": rid, "_step": step, "_order": i, "_n_prompt": n_prompt, "_arrival_s": arrival_s})
    requests.sort(key=lambda r: (r["_step"], r["_order"]))
    return config, step_s, requests


class TokenIds:
    """Deterministic token ids: the same (segment_id, offset) always gets the same id; every other
    prompt position and every sampled token gets a fresh one, so only segments are shared.

    With `vocab_size` (a real model's embedding must accept every id) the k-th fresh id is a hash
    of k folded into the vocabulary: two different 32-token blocks then coincide with probability
    ~vocab^-32, so prefix caching still finds exactly the shared segments."""

    def __init__(self, vocab_size: int | None = None) -> None:
        self._next = FIRST_TOKEN_ID
        self._segment: dict[tuple[int, int], int] = {}
        self._vocab = vocab_size

    def _id(self, k: int) -> int:
        if self._vocab is None:
            return k
        h = (k * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF     # Fibonacci hashing, then xor-shift
        h ^= h >> 29
        return FIRST_TOKEN_ID + h % (self._vocab - FIRST_TOKEN_ID)

    def fresh(self) -> int:
        self._next += 1
        return self._id(self._next - 1)

    def prompt(self, r: dict[str, Any]) -> list[int]:
        if "prompt_token_ids" in r:
            return [int(t) for t in r["prompt_token_ids"]]
        ids: list[int] = []
        for seg_id, length in r.get("segments", ()):
            for off in range(int(length)):
                key = (int(seg_id), off)
                tok = self._segment.get(key)
                if tok is None:
                    tok = self._segment[key] = self.fresh()
                ids.append(tok)
        if len(ids) > r["_n_prompt"]:
            raise ValueError(f"request {r['id']}: segments are longer than its prompt")
        num_unique = r["_n_prompt"] - len(ids)
        ids.extend(self._id(k) for k in range(self._next, self._next + num_unique))
        self._next += num_unique
        return ids


def _tiny_llama_dir(max_model_len: int) -> str:
    """A folder holding only a config.json: enough for ModelConfig with skip_tokenizer_init."""
    folder = tempfile.mkdtemp(prefix="pagesim-vllm-model-")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "vocab_size": 32000, "max_position_embeddings": max_model_len,
           "rms_norm_eps": 1e-5, "torch_dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    Path(folder, "config.json").write_text(json.dumps(cfg))
    return folder


def build_scheduler(config: dict[str, Any]) -> Any:
    """Build the scheduler as EngineCore.__init__ / _initialize_kv_caches would, minus the model."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import (
        generate_scheduler_kv_cache_config,
        get_kv_cache_configs,
        get_request_block_hasher,
        init_none_hash,
        resolve_kv_cache_block_sizes,
    )
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec
    from vllm.v1.structured_output import StructuredOutputManager

    mml = int(config["max_model_len"])
    model_dir = _tiny_llama_dir(mml)
    try:   # ModelConfig reads config.json now; nothing reads the folder later
        model_config = ModelConfig(model=model_dir, skip_tokenizer_init=True,
                                   max_model_len=mml, dtype="float32", seed=0)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    scheduler_config = SchedulerConfig(
        max_num_seqs=config["max_num_seqs"], max_num_batched_tokens=config["max_num_batched_tokens"],
        enable_chunked_prefill=config["enable_chunked_prefill"],
        long_prefill_token_threshold=config["long_prefill_token_threshold"], policy=config["policy"],
        watermark=config["watermark"], scheduler_reserve_full_isl=config["scheduler_reserve_full_isl"],
        max_model_len=mml, is_encoder_decoder=False)
    cache_config = CacheConfig(block_size=config["block_size"], enable_prefix_caching=config["enable_prefix_caching"],
                               num_gpu_blocks_override=config["num_gpu_blocks_override"])
    vllm_config = VllmConfig(model_config=model_config, scheduler_config=scheduler_config,
                             cache_config=cache_config)
    # The CPU platform forces async_scheduling off; on GPUs it is on by default.  It only sizes
    # max_concurrent_batches here; the scheduler class and the batch queue are chosen below.
    vllm_config.scheduler_config.async_scheduling = bool(config["async_scheduling"])
    for key, got in (("block_size", vllm_config.cache_config.block_size),
                     ("enable_prefix_caching", vllm_config.cache_config.enable_prefix_caching),
                     ("enable_chunked_prefill", vllm_config.scheduler_config.enable_chunked_prefill),
                     ("max_num_batched_tokens", vllm_config.scheduler_config.max_num_batched_tokens)):
        if got != config[key]:
            raise RuntimeError(f"vLLM changed {key} from {config[key]!r} to {got!r}")

    hf = model_config.hf_text_config
    head_size = hf.hidden_size // hf.num_attention_heads
    spec = FullAttentionSpec(block_size=config["block_size"], num_kv_heads=hf.num_key_value_heads,
                             head_size=head_size, dtype=torch.float32)
    layers = {f"model.layers.{i}.self_attn.attn": spec for i in range(hf.num_hidden_layers)}
    # More memory than the override needs: the override decides num_blocks, as in the engine.
    memory = (config["num_gpu_blocks_override"] + 1) * spec.page_size_bytes * len(layers)
    vllm_config.cache_config.kv_cache_layout = "LBNHC"   # bytes only, never read: no attention runs
    kv_cache_config = generate_scheduler_kv_cache_config(get_kv_cache_configs(vllm_config, [layers], [memory]))
    vllm_config.cache_config.num_gpu_blocks = kv_cache_config.num_blocks
    block_size, hash_block_size = resolve_kv_cache_block_sizes(kv_cache_config, vllm_config)
    kv_cache_config.hash_block_size = hash_block_size

    cls = AsyncScheduler if config["async_scheduling"] else Scheduler
    scheduler = cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
                    structured_output_manager=StructuredOutputManager(vllm_config),
                    block_size=block_size, hash_block_size=hash_block_size, log_stats=False)
    block_hasher = None
    if vllm_config.cache_config.enable_prefix_caching:   # as EngineCore.__init__
        hash_fn = get_hash_fn_by_name(vllm_config.cache_config.prefix_caching_hash_algo)
        init_none_hash(hash_fn)
        block_hasher = get_request_block_hasher(hash_block_size, hash_fn)
    return scheduler, block_hasher


def make_requests(r: dict[str, Any], tokens: TokenIds, block_hasher: Any) -> list[Any]:
    """The vllm Requests for one job request: itself, or its n children (parallel_sampling.py)."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    n, max_tokens = int(r.get("n", 1)), int(r["max_tokens"])
    params = SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True)
    prompt = tokens.prompt(r)
    ids = [r["id"]] if n == 1 else [f"{i}_{r['id']}" for i in range(n)]
    return [Request(request_id=rid, prompt_token_ids=list(prompt), sampling_params=params,
                    pooling_params=None, arrival_time=r["_arrival_s"],
                    priority=int(r.get("priority", 0)), block_hasher=block_hasher) for rid in ids]


def run_job(job: dict[str, Any]) -> tuple[TraceHeader, list[StepRecord]]:
    """Run the whole job through vLLM's scheduler; return the trace (empty steps left out)."""
    config, step_s, pending = load_job(job)   # before importing vllm: bad jobs fail fast
    import vllm
    from vllm.v1.outputs import ModelRunnerOutput

    max_steps = int(job.get("max_steps", 10_000_000))
    t0 = time.perf_counter()
    scheduler, block_hasher = build_scheduler(config)
    t1 = time.perf_counter()
    tokens = TokenIds()
    preempted: list[str] = []
    real_preempt = scheduler._preempt_request

    def record_preempt(request: Any, *args: Any, **kwargs: Any) -> None:   # observe, never steer
        preempted.append(request.request_id)
        real_preempt(request, *args, **kwargs)

    scheduler._preempt_request = record_preempt
    gc.collect()
    gc.freeze()   # as EngineCore.__init__ (freeze_gc_heap): long-lived objects skip GC scans
    queue: deque[tuple[Any, Any]] = deque()     # step_with_batch_queue's batch queue
    queue_size = 2 if config["async_scheduling"] else 1
    block_pool = scheduler.kv_cache_manager.block_pool
    records: list[StepRecord] = []
    step, next_req = 0, 0
    while next_req < len(pending) or scheduler.has_requests() or queue:
        if not (scheduler.has_requests() or queue):
            step = max(step, pending[next_req]["_step"])          # idle: jump to the next arrival
        while next_req < len(pending) and pending[next_req]["_step"] <= step:
            for request in make_requests(pending[next_req], tokens, block_hasher):
                scheduler.add_request(request)
            next_req += 1
        preempted.clear()
        scheduled: dict[str, int] = {}
        hits: dict[str, int] = {}
        finished: list[str] = []
        executed = False
        if scheduler.has_requests():
            out = scheduler.schedule()
            scheduled = dict(out.num_scheduled_tokens)
            # Admissions (new, or resumed after preemption) with the tokens their prefix-cache
            # lookup found: num_computed_tokens before _update_after_schedule advances it.
            admitted = {d.req_id: d.num_computed_tokens for d in out.scheduled_new_reqs}
            cached = out.scheduled_cached_reqs
            for rid, num_computed in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
                if rid in cached.resumed_req_ids:
                    admitted[rid] = num_computed
            hits = {rid: admitted[rid] for rid in scheduled if rid in admitted}   # admission order
            req_ids = list(scheduled)
            sampled = [[] if scheduler.requests[rid].is_prefill_chunk else [tokens.fresh()] for rid in req_ids]
            mro = ModelRunnerOutput(req_ids=req_ids, req_id_to_index={rid: i for i, rid in enumerate(req_ids)},
                                    sampled_token_ids=sampled)
            queue.appendleft((out, mro))
            executed = out.total_num_scheduled_tokens > 0
        if queue and (len(queue) >= queue_size or not (executed or scheduler.has_requests())):
            out, mro = queue.pop()
            for outputs in scheduler.update_from_output(out, mro).values():
                finished.extend(o.request_id for o in outputs.outputs if o.finish_reason is not None)
        num_running, num_waiting = scheduler.get_request_counts()
        rec = StepRecord(step=step, clock_s=step * step_s, scheduled=scheduled, preempted=list(preempted),
                         finished=finished, num_free_blocks=block_pool.get_num_free_blocks(),
                         kv_cache_usage=scheduler.get_kv_cache_usage(), num_running=num_running,
                         num_waiting=num_waiting, new_prefix_hits=hits)
        if not rec.is_empty:
            records.append(rec)
        step += 1
        if step > max_steps:
            raise RuntimeError(f"no end after {max_steps} steps (job.max_steps)")
    gc.unfreeze()   # as EngineCore.shutdown
    stats = {"build_s": round(t1 - t0, 3), "run_s": round(time.perf_counter() - t1, 3), "num_engine_steps": step}
    header = TraceHeader(source="vllm", vllm_version=vllm.__version__, step_s=step_s, config=config, stats=stats)
    return header, records


def main(argv: list[str]) -> int:
    """``vllm_driver.py JOB.json OUT.jsonl [JOB2.json OUT2.jsonl ...]``: several jobs share one
    process, so vLLM's import (seconds) is paid once."""
    if len(argv) < 3 or len(argv) % 2 == 0:
        print("usage: vllm_driver.py JOB.json OUT.jsonl [JOB.json OUT.jsonl ...]", file=sys.stderr)
        return 2
    for job_path, out_path in zip(argv[1::2], argv[2::2], strict=True):
        header, records = run_job(json.loads(Path(job_path).read_text()))
        write_trace(out_path, header, records)
        print(json.dumps({"job": job_path, "records": len(records),
                          "preemptions": sum(len(r.preempted) for r in records), **header.stats}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main(sys.argv))
