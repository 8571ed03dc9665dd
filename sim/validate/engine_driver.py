"""Run vLLM's real engine (model and all) on a wall clock and write its engine trace.

Run under vLLM's interpreter (stdlib + vllm only; pagesim is not installed there):

    .venv-vllm/bin/python sim/validate/engine_driver.py job.json trace.jsonl [job2.json trace2.jsonl ...]

The job is `vllm_driver.load_job`'s (same config keys, same requests, same synthetic token ids,
so prefix sharing is reproduced) plus ``"model"``: a Hugging Face ``config.json`` mapping.  The
model gets dummy weights (``load_format="dummy"``, no tokenizer), the engine runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and this loop is the client and the engine's clock:

    until every request is done:
        add every request whose arrival time (seconds since start) has passed
        if the engine has work: step() and stamp the tokens it returns with the time it returned
        else: sleep until the next arrival

The scheduler's decisions are observed, never steered: ``Scheduler.schedule`` and
``_preempt_request`` are wrapped to note their results.  A ``max_tokens`` request carries
``SamplingParams(min_tokens=max_tokens, ignore_eos=True)`` so it produces exactly that many tokens.
One warm-up request runs before the clock starts (first-call allocations and lazy imports would
otherwise land on the first measured step).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__:
    from .engine_trace import EngineStep, EngineTrace, RequestRecord, write_engine_trace
    from .step_trace import StepRecord, TraceHeader
    from .vllm_driver import TokenIds, load_job
else:  # run as a script: this file's folder is on sys.path
    from engine_trace import EngineStep, EngineTrace, RequestRecord, write_engine_trace  # type: ignore[no-redef]
    from step_trace import StepRecord, TraceHeader  # type: ignore[no-redef]
    from vllm_driver import TokenIds, load_job  # type: ignore[no-redef]

#: The model when the job names none: a 2-layer Llama that steps in milliseconds on a CPU.
TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 1024,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "float32",
    "bos_token_id": 1, "eos_token_id": 2}


def host_cpu() -> str:
    """The CPU model name, for provenance."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_engine(config: dict[str, Any], model: dict[str, Any], seed: int) -> Any:
    """An in-process LLMEngine with the job's scheduler settings and dummy weights."""
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    if config["async_scheduling"]:
        raise ValueError("job.config.async_scheduling: the CPU build of vLLM runs sync scheduling only")
    folder = Path(tempfile.mkdtemp(prefix="pagesim-engine-model-"))
    cfg = {**model, "max_position_embeddings": max(int(model.get("max_position_embeddings", 0)),
                                                   int(config["max_model_len"]))}
    (folder / "config.json").write_text(json.dumps(cfg))
    args = EngineArgs(
        model=str(folder), load_format="dummy", skip_tokenizer_init=True, dtype=str(cfg.get("torch_dtype", "float32")),
        seed=seed, enforce_eager=True, gpu_memory_utilization=0.1, block_size=config["block_size"],
        num_gpu_blocks_override=config["num_gpu_blocks_override"], max_model_len=config["max_model_len"],
        max_num_seqs=config["max_num_seqs"], max_num_batched_tokens=config["max_num_batched_tokens"],
        enable_chunked_prefill=config["enable_chunked_prefill"], enable_prefix_caching=config["enable_prefix_caching"],
        long_prefill_token_threshold=config["long_prefill_token_threshold"], watermark=config["watermark"],
        scheduler_reserve_full_isl=config["scheduler_reserve_full_isl"], scheduling_policy=config["policy"])
    engine = LLMEngine.from_engine_args(args)
    got = engine.vllm_config
    for key, value in (("block_size", got.cache_config.block_size),
                       ("num_gpu_blocks", got.cache_config.num_gpu_blocks),
                       ("max_num_batched_tokens", got.scheduler_config.max_num_batched_tokens),
                       ("enable_chunked_prefill", got.scheduler_config.enable_chunked_prefill)):
        want = config["num_gpu_blocks_override" if key == "num_gpu_blocks" else key]
        if value != want:
            raise RuntimeError(f"vLLM changed {key} from {want!r} to {value!r}")
    return engine


class Observer:
    """Wraps the scheduler's `schedule` and `_preempt_request` to note each step's decisions."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.output: Any = None
        self.preempted: list[str] = []
        self.names: dict[str, str] = {}         # engine request id -> job request id
        real_schedule, real_preempt = scheduler.schedule, scheduler._preempt_request

        def schedule(*args: Any, **kwargs: Any) -> Any:
            self.output = real_schedule(*args, **kwargs)
            return self.output

        def preempt(request: Any, *args: Any, **kwargs: Any) -> Any:
            self.preempted.append(self.names.get(request.request_id, request.request_id))
            return real_preempt(request, *args, **kwargs)

        scheduler.schedule, scheduler._preempt_request = schedule, preempt

    def reset(self) -> None:
        self.output, self.preempted = None, []

    def shape(self) -> tuple[dict[str, int], dict[str, int], tuple[int, int, int, float]]:
        """(scheduled, prefix hits of admissions, (prefill tokens, decodes, decode context, pairs))."""
        out = self.output
        if out is None:
            return {}, {}, (0, 0, 0, 0.0)
        scheduled = dict(out.num_scheduled_tokens)
        computed = {d.req_id: d.num_computed_tokens for d in out.scheduled_new_reqs}
        admitted = dict(computed)
        cached = out.scheduled_cached_reqs
        for rid, n in zip(cached.req_ids, cached.num_computed_tokens, strict=True):
            computed[rid] = n
            if rid in cached.resumed_req_ids:
                admitted[rid] = n
        prefill = decodes = ctx = 0
        pairs = 0.0
        for rid, q in scheduled.items():
            done = computed[rid]
            if q == 1:
                decodes += 1
                ctx += done + 1
            else:
                prefill += q
                pairs += q * (done + (q + 1) / 2)
        hits = {self.names[rid]: admitted[rid] for rid in scheduled if rid in admitted}
        return {self.names[rid]: q for rid, q in scheduled.items()}, hits, (prefill, decodes, ctx, pairs)


def warm_up(engine: Any, config: dict[str, Any], vocab: int) -> None:
    """Warm-up before the clock starts: one full-budget prefill then a few decode steps of a batch,
    so first-use costs (allocator growth, oneDNN primitives for new shapes) stay out of the trace."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    bs, usable = int(config["block_size"]), int(config["num_gpu_blocks_override"]) - 1
    k = max(1, min(16, int(config["max_num_seqs"]), usable))
    length = min(int(config["max_num_batched_tokens"]) // k, (usable // k) * bs - 8, int(config["max_model_len"]) - 9)
    length = max(1, length)
    params = SamplingParams(max_tokens=8, min_tokens=8, ignore_eos=True)
    for i in range(k):
        ids = [3 + (7919 * (i * length + j)) % (vocab - 3) for j in range(length)]
        engine.add_request(f"warmup-{i}", TokensPrompt(prompt_token_ids=ids), params)
    while engine.has_unfinished_requests():
        engine.step()
    engine.reset_prefix_cache()


def run_job(job: dict[str, Any]) -> EngineTrace:
    """Run the job's requests through the real engine at their arrival times; return the trace."""
    config, _, pending = load_job(job)
    import vllm
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    model = dict(job.get("model") or TINY_LLAMA)
    pending.sort(key=lambda r: (r["_arrival_s"], r["_order"]))
    t_build = time.perf_counter()
    engine = build_engine(config, model, int(job.get("seed", 0)))
    vocab = int(model["vocab_size"])
    warm_up(engine, config, vocab)
    scheduler = engine.engine_core.engine_core.scheduler
    pool = scheduler.kv_cache_manager.block_pool
    observer = Observer(scheduler)
    tokens = TokenIds(vocab)
    prompts = {r["id"]: tokens.prompt(r) for r in pending}     # ids made before the clock starts
    records: dict[str, RequestRecord] = {}
    steps: list[EngineStep] = []
    build_s = time.perf_counter() - t_build
    t0 = time.perf_counter()
    nxt = 0
    while nxt < len(pending) or engine.has_unfinished_requests():
        start = time.perf_counter() - t0
        if steps and steps[-1].duration_s < 0:      # the previous cycle ends where this one starts
            steps[-1] = _close(steps[-1], start)
        while nxt < len(pending) and pending[nxt]["_arrival_s"] <= start:
            r = pending[nxt]
            if int(r.get("n", 1)) != 1:
                raise ValueError(f"request {r['id']}: n > 1 is not run on the real engine")
            params = SamplingParams(max_tokens=int(r["max_tokens"]), min_tokens=int(r["max_tokens"]),
                                    ignore_eos=True)
            internal = engine.add_request(r["id"], TokensPrompt(prompt_token_ids=prompts[r["id"]]), params,
                                          arrival_time=t0 + r["_arrival_s"])
            observer.names[internal] = r["id"]      # the engine suffixes ids; traces use the job's
            records[r["id"]] = RequestRecord(r["id"], r["_arrival_s"], r["_n_prompt"])
            nxt += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[nxt]["_arrival_s"] - (time.perf_counter() - t0)))
            continue
        observer.reset()
        t_exec = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        finished = []
        for o in outputs:
            rec = records[o.request_id]
            n_new = len(o.outputs[0].token_ids) - rec.output_tokens
            rec.token_s.extend([now - t0] * n_new)
            if o.finished:
                finished.append(o.request_id)
                if o.metrics is not None:
                    records[o.request_id] = RequestRecord(rec.id, rec.arrival_s, rec.prompt_tokens, rec.token_s,
                                                          int(getattr(o.metrics, "num_preemptions", 0)))
        scheduled, hits, (prefill, decodes, ctx, pairs) = observer.shape()
        num_running, num_waiting = scheduler.get_request_counts()
        decisions = StepRecord(step=len(steps), clock_s=start, scheduled=scheduled, preempted=list(observer.preempted),
                               finished=finished, num_free_blocks=pool.get_num_free_blocks(),
                               kv_cache_usage=scheduler.get_kv_cache_usage(), num_running=num_running,
                               num_waiting=num_waiting, new_prefix_hits=hits)
        if decisions.is_empty:
            continue
        steps.append(EngineStep(decisions, start, -1.0, now - t_exec, prefill, decodes, ctx, pairs))
    if steps and steps[-1].duration_s < 0:
        steps[-1] = _close(steps[-1], time.perf_counter() - t0)
    stats = {"build_s": round(build_s, 3), "run_s": round(time.perf_counter() - t0, 3), "num_steps": len(steps),
             "host_cpu": host_cpu(), "model": model, "torch_threads": _torch_threads()}
    engine.engine_core.shutdown()       # its worker threads must not compete with the next job's
    del engine, scheduler, observer
    import gc
    gc.collect()
    header = TraceHeader(source="vllm-engine", vllm_version=vllm.__version__, config=config, stats=stats)
    return EngineTrace(header, steps, [records[r["id"]] for r in sorted(pending, key=lambda r: r["_order"])])


def _close(step: EngineStep, end_s: float) -> EngineStep:
    from dataclasses import replace
    return replace(step, duration_s=max(end_s - step.start_s, step.exec_s))


def _torch_threads() -> int:
    import torch
    return int(torch.get_num_threads())


def main(argv: list[str]) -> int:
    """``engine_driver.py JOB.json OUT.jsonl [...]``: one engine per job, vLLM imported once."""
    if len(argv) < 3 or len(argv) % 2 == 0:
        print("usage: engine_driver.py JOB.json OUT.jsonl [JOB.json OUT.jsonl ...]", file=sys.stderr)
        return 2
    for job_path, out_path in zip(argv[1::2], argv[2::2], strict=True):
        trace = run_job(json.loads(Path(job_path).read_text()))
        write_engine_trace(out_path, trace)
        print(json.dumps({"job": job_path, "steps": len(trace.steps), **trace.header.stats}, default=str))
    return 0


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    sys.exit(main(sys.argv))
