"""`pagesim validate --engine vllm`: the real engine, a profile fitted to it, pagesim on the same requests.

For one scenario:

1. the job (`cli.build_job`, shared with the scheduler-only path: same settings, same block count,
   same requests and token ids) runs through vLLM's real engine (`engine_driver.py`, a subprocess
   in vLLM's venv) on a wall clock — or an existing trace is read instead (``--from-trace``: an
   engine trace, or a `vllm bench serve --save-detailed` JSON);
2. the step times are fitted into a ``kind: engine-fit`` profile (`calibrate/fit_trace.py`),
   written as ``profile.json`` beside the trace (a bench JSON has no step times: the scenario's
   ``hardware.profile`` or ``--profile`` prices the steps instead);
3. pagesim's simulator runs the same requests with that profile (`runner.run_scenario`; the run's
   results are written too, so ``pagesim report`` draws the folder), and `engine_compare` puts the
   schedule and the latencies side by side.

Passing means: with every arrival at t = 0 the schedule is step-for-step identical, and TTFT/TPOT
p50/p99 and throughput are within `engine_compare.TOLERANCES` (reported, never loosened here).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.config import Scenario
from sim.errors import ScenarioError
from sim.requests_table import RequestTable

from .engine_compare import (
    Latencies,
    compare_latency,
    compare_steps,
    engine_step_table,
    format_table,
    latencies_from_bench,
    latencies_from_requests,
    latencies_from_run,
)
from .engine_trace import EngineTrace

MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def hf_config(model: Any) -> dict[str, Any]:
    """The Hugging Face config.json vLLM builds the model from (gated-MLP families only)."""
    if model.architecture not in MODEL_TYPES:
        raise ValueError(f"model {model.name}: {model.architecture} is not run on the real engine "
                         f"(expected one of {', '.join(MODEL_TYPES)})")
    cfg = {"architectures": [model.architecture], "model_type": MODEL_TYPES[model.architecture],
           "hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
           "num_attention_heads": model.num_attention_heads, "num_key_value_heads": model.num_kv_heads,
           "num_hidden_layers": model.num_layers, "vocab_size": model.vocab_size,
           "max_position_embeddings": model.max_model_len, "rms_norm_eps": 1e-5, "torch_dtype": model.dtype,
           "tie_word_embeddings": model.tie_word_embeddings, "bos_token_id": 1, "eos_token_id": 2}
    if model.head_dim:
        cfg["head_dim"] = model.head_dim
    return cfg


def engine_job(sc: Scenario) -> tuple[dict[str, Any], RequestTable]:
    """The engine job and its request table; what the CPU engine cannot run is refused in one line."""
    from .cli import build_job

    if sc.engine.async_scheduling is not False:
        raise ScenarioError(sc.path, "engine.async_scheduling", "the CPU build of vLLM schedules synchronously; "
                            "set async_scheduling: false", sc.engine.async_scheduling)
    if sc.engine.block_size % 32:
        raise ScenarioError(sc.path, "engine.block_size", "vLLM's CPU attention needs a multiple of 32",
                            sc.engine.block_size)
    job, table = build_job(sc, 1.0)
    if table.n is not None and (table.n > 1).any():
        raise ScenarioError(sc.path, "workload.n", "parallel sampling is not run on the real engine")
    try:
        job["model"] = hf_config(sc.model)
    except ValueError as e:
        raise ScenarioError(sc.path, "model", str(e)) from None
    job["seed"] = sc.run.seed
    del job["step_s"]
    return job, table


@dataclass(frozen=True)
class Measured:
    """What the measured side provides: latencies always, steps and a fit when it had step times."""

    latencies: Latencies
    table: RequestTable                 # the requests pagesim replays
    trace: EngineTrace | None           # None for a bench JSON
    source: str


def measured_from_engine_trace(trace: EngineTrace, table: RequestTable | None, source: str) -> Measured:
    """An engine trace; its requests replace the scenario's when the lengths differ."""
    reqs = trace.requests
    arrival = np.array([r.arrival_s for r in reqs])
    prompt = np.array([r.prompt_tokens for r in reqs], dtype=np.int64)
    out = np.array([r.output_tokens for r in reqs], dtype=np.int64)
    same = (table is not None and len(table) == len(reqs) and np.array_equal(table.prompt_tokens, prompt)
            and np.array_equal(table.output_tokens, out))
    if same and table is not None:
        replay = replace(table, arrival_s=arrival)
    else:
        replay = RequestTable(arrival_s=arrival, prompt_tokens=prompt, output_tokens=out, source=source)
    return Measured(latencies_from_requests(reqs), replay, trace, source)


def measured_from_bench(path: Path) -> Measured:
    from .bench_json import read_bench

    b = read_bench(path)
    order = np.argsort(b.arrival_s, kind="stable")
    table = RequestTable(arrival_s=b.arrival_s[order], prompt_tokens=b.prompt_tokens[order],
                         output_tokens=b.output_tokens[order], source=f"vllm bench {path.name}")
    lat = latencies_from_bench(b.ttft_s, b.itl_s, b.e2el_s, b.output_tokens, b.duration_s)
    return Measured(lat, table, None, f"vllm bench serve ({path.name}, {b.num_failed} failed left out)")


def fit_profile(trace: EngineTrace, trace_path: Path, block_size: int, model_name: str, out: Path) -> dict[str, Any]:
    """Fit the trace's step times; write ``out`` (a profile `hardware.profile` loads); return it."""
    from calibrate.fit_trace import StepShape, fit_steps, profile_from_fit, trace_provenance
    from calibrate.profile import validate_profile

    shapes = [StepShape(s.num_prefill_tokens, s.num_decode_tokens, s.decode_ctx_tokens, s.prefill_pairs, s.duration_s)
              for s in trace.steps]
    fit = fit_steps(shapes)
    cpu = str(trace.header.stats.get("host_cpu") or "cpu")
    profile = profile_from_fit(fit, block_size=block_size, gpu=f"CPU: {cpu}", model=model_name,
                               provenance=trace_provenance(trace.header, str(trace_path)))
    problems = validate_profile(profile)
    if problems:
        raise RuntimeError(f"fitted profile does not follow the schema: {problems[0]}")
    out.write_text(json.dumps(profile, indent=2) + "\n")
    return profile


def validate_scenario(sc: Scenario, out_dir: Path, from_trace: Path | None = None,
                      profile_path: Path | None = None, trace_path: Path | None = None) -> tuple[dict[str, Any], str]:
    """Everything after the engine ran (or a trace was given): fit, simulate, compare, write.
    `trace_path`: the engine trace just written by the driver.  Returns (summary, printed table)."""
    from sim.results import write_results
    from sim.runner import run_scenario

    from .engine_trace import is_engine_trace, read_engine_trace

    out_dir.mkdir(parents=True, exist_ok=True)
    _, table = engine_job(sc) if from_trace is None or is_engine_trace(from_trace) else (None, None)
    source_path = trace_path or from_trace
    if source_path is None:
        raise ValueError("validate_scenario needs the engine's trace or --from-trace")
    if is_engine_trace(source_path):
        trace = read_engine_trace(source_path)
        measured = measured_from_engine_trace(trace, table, f"engine trace {source_path.name}")
    else:
        measured = measured_from_bench(source_path)
    fit: dict[str, Any] | None = None
    if measured.trace is not None and profile_path is None:
        profile_path = out_dir / "profile.json"
        fit = fit_profile(measured.trace, source_path, sc.engine.block_size, sc.model.name, profile_path)["fit"]
    elif profile_path is None:
        if sc.hardware.profile is None and sc.hardware.constant_step_s is None:
            raise ScenarioError(sc.path, "hardware.profile", "a vllm bench trace has no step times to fit; "
                                "give --profile PATH or hardware.profile")
    hardware = sc.hardware if profile_path is None else replace(sc.hardware, profile=str(profile_path.resolve()),
                                                                constant_step_s=None)
    sim_sc = replace(sc, hardware=hardware, run=replace(sc.run, warmup_requests=0, warmup_s=0.0, record_steps=True,
                                                        max_sim_time_s=None))
    result = run_scenario(sim_sc, measured.table)
    simulated = latencies_from_run(result.requests, result.summary)
    latency = compare_latency(measured.latencies, simulated)
    steps_summary: dict[str, Any] | None = None
    deterministic = bool((measured.table.arrival_s <= 0).all())
    if measured.trace is not None:
        side, steps_summary = compare_steps(engine_step_table(measured.trace.steps), result.steps)
        side.to_csv(out_dir / "validation_steps.csv", index=False)
    latency.to_csv(out_dir / "validation_latency.csv", index=False)
    _request_samples(measured.latencies, simulated).to_csv(out_dir / "validation_requests.csv", index=False)
    failures = [f"{r.metric} {100 * r.rel_err:+.1f}% (tolerance {100 * r.tolerance:.0f}%)"
                for r in latency.itertuples() if not r.ok]
    replay: dict[str, Any] | None = None
    if measured.trace is not None and not sc.engine.async_scheduling:
        replay, replay_latency = replay_measured_steps(sim_sc, measured)
        replay["host_drift"] = _host_drift(measured.trace, fit)
        replay_latency.to_csv(out_dir / "validation_replay_latency.csv", index=False)
        failures += [f"replay with measured step times: {r.metric} {100 * r.rel_err:+.1f}% "
                     f"(tolerance {100 * r.tolerance:.0f}%)" for r in replay_latency.itertuples() if not r.ok]
    if deterministic and steps_summary is not None and not steps_summary["schedule_identical"]:
        failures.insert(0, f"schedule differs from step {steps_summary['first_divergent_step']}")
    header = measured.trace.header if measured.trace is not None else None
    summary = {"scenario": sc.name, "engine": "vllm", "source": measured.source,
               "vllm_version": header.vllm_version if header else None,
               "engine_stats": {k: v for k, v in (header.stats if header else {}).items() if k != "model"},
               "deterministic_arrivals": deterministic, "num_requests": len(measured.table),
               "profile": str(profile_path) if profile_path else sc.hardware.profile, "fit": fit,
               "steps": steps_summary, "latency": latency.to_dict("records"), "replay": replay, "passed": not failures,
               "failures": failures}
    write_results(out_dir, result.summary, result.requests, result.steps, sim_sc.raw,
                  {"validation_source": measured.source})
    (out_dir / "validation.json").write_text(json.dumps(_finite(summary), indent=2, default=str) + "\n")
    printed = format_table(latency, steps_summary)
    if replay is not None:
        printed += "\n" + format_replay(replay)
    return summary, printed


def replay_measured_steps(sim_sc: Scenario, measured: Measured) -> tuple[dict[str, Any], pd.DataFrame]:
    """pagesim with the engine's own step durations (`replay.py`): (summary, latency table).  Tells
    a scheduling difference from a step-time difference: this run has no cost model to be wrong."""
    from sim.runner import run_scenario

    if measured.trace is None:
        raise ValueError("a replay needs the engine's step times (an engine trace, not a bench JSON)")
    steps = measured.trace.steps
    result = run_scenario(sim_sc, measured.table, step_times_s=[s.duration_s for s in steps])
    latency = compare_latency(measured.latencies, latencies_from_run(result.requests, result.summary))
    _, cmp = compare_steps(engine_step_table(steps), result.steps)
    figures = {r.metric: float(r.rel_err) for r in latency.itertuples() if not np.isnan(r.tolerance)}
    summary = {"rel_err": figures, "max_abs_rel_err": max((abs(v) for v in figures.values()), default=0.0),
               "pagesim_steps": cmp["pagesim_steps"], "engine_steps": cmp["engine_steps"],
               "pct_identical": cmp["pct_identical"], "passed": bool(latency["ok"].all())}
    return summary, latency


def _host_drift(trace: EngineTrace, fit: dict[str, Any] | None) -> dict[str, float] | None:
    """`replay.host_drift` of the trace against the fitted step times (None without a fit)."""
    if fit is None:
        return None
    from calibrate.fit_trace import FEATURES, StepShape, predict

    from .replay import host_drift

    coef = np.array([fit["coefficients"][k] for k in FEATURES])
    shapes = [StepShape(s.num_prefill_tokens, s.num_decode_tokens, s.decode_ctx_tokens, s.prefill_pairs, s.duration_s)
              for s in trace.steps]
    return host_drift([s.start_s for s in trace.steps], [s.duration_s for s in trace.steps],
                      predict(coef, shapes).tolist(),
                      [-1 if s.num_prefill_tokens else s.num_decode_tokens for s in trace.steps])


def format_replay(replay: dict[str, Any]) -> str:
    errs = ", ".join(f"{k.removesuffix('_ms')} {100 * v:+.1f}%" for k, v in replay["rel_err"].items())
    line = (f"replay with the measured step times: {errs}; {replay['pagesim_steps']} pagesim steps "
            f"({replay['pct_identical']:.1f}% identical)")
    drift = replay.get("host_drift")
    if drift:
        line += (f"\nhost speed drift: decode steps ran at {drift['min_ratio']:.2f}-{drift['max_ratio']:.2f} "
                 f"x their typical time across {drift['num_windows']} windows of {drift['window_s']:g} s")
    return line


def _request_samples(measured: Latencies, simulated: Latencies) -> pd.DataFrame:
    """Long table for the report's CDFs: side, metric, seconds."""
    parts = []
    for side, lat in (("measured", measured), ("pagesim", simulated)):
        for metric in ("ttft", "tpot", "e2el"):
            values = getattr(lat, f"{metric}_s")
            parts.append(pd.DataFrame({"side": side, "metric": metric, "seconds": values}))
    return pd.concat(parts, ignore_index=True)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v
