"""The scenario: frozen, validated configuration, and the only YAML reader.

Sections: `model`, `hardware`, `engine` (vLLM's option names and meanings), `workload`, `slo`,
`run`.  `load_scenario(path, overrides)` parses the file, applies `--set key.path=value`
overrides, builds every section with `sim.schema.build` (unknown keys, wrong types and
impossible values are refused with one line naming the file, the key path and the value), then
checks cross-section rules (the model fits in memory, prompts fit in `max_model_len`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from sim.admission import AdmissionConfig
from sim.autoscaler import AutoscalingConfig
from sim.disaggregation import DisaggregationConfig
from sim.errors import ScenarioError
from sim.schema import Ctx, build, positive
from sim.spec_decode import SpeculativeConfig
from sim.workload import WorkloadConfig

Allocator = Literal["paged", "contiguous-max", "contiguous-pow2", "contiguous-oracle"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """vLLM engine options (names and meanings as `vllm serve` flags) plus pagesim's own."""

    block_size: int = 16                        # --block-size: tokens per KV block
    kv_cache_dtype: str = "auto"                # --kv-cache-dtype: auto | fp16 | bf16 | fp8 | fp8_e4m3 | fp8_e5m2 | int8
    swap_space: float = 4.0                     # --swap-space: GiB of CPU swap per GPU (vllm-v0)
    gpu_memory_utilization: float = 0.9         # --gpu-memory-utilization
    max_num_seqs: int | None = None             # --max-num-seqs (None: vLLM 0.32 `vllm serve` default for the GPU)
    max_num_batched_tokens: int | None = None   # --max-num-batched-tokens (None: vLLM 0.32 serve default for the GPU)
    max_model_len: int | None = None            # --max-model-len (None: the model's)
    enable_chunked_prefill: bool = True         # --enable-chunked-prefill (v1 default on)
    enable_prefix_caching: bool = True          # --enable-prefix-caching (v1 default on)
    long_prefill_token_threshold: int = 0       # --long-prefill-token-threshold
    scheduler_reserve_full_isl: bool = True     # vLLM 0.32: admit only if the whole sequence fits
    watermark: float | None = None              # fraction of blocks kept free at admission (v1: 0, v0: 0.01)
    preemption_mode: Literal["recompute", "swap"] | None = None  # v0 only; None = vLLM's choice
    scheduler: Literal["vllm-v1", "vllm-v0"] = "vllm-v1"
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"   # --scheduling-policy (priority: workload.classes[].priority)
    async_scheduling: bool | None = None        # None: on for GPU hardware (vLLM 0.32 default), off for CPU
    tensor_parallel_size: int = 1               # --tensor-parallel-size
    enable_expert_parallel: bool = False        # --enable-expert-parallel: MoE experts split whole across the TP group
    pipeline_parallel_size: int = 1             # --pipeline-parallel-size: stages of layers (sim.pipeline)
    num_replicas: int = 1                       # data-parallel engine replicas behind a router
    router: Literal["round-robin", "least-outstanding-tokens", "least-kv-usage", "prefix-aware", "weighted"] = "round-robin"
    router_weights: dict[str, float] = field(default_factory=dict)  # weighted: scorer -> weight (sim.router)
    router_scrape_interval_s: float = 0.0       # router sees KV usage / queue length scraped this often (0: live)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)  # gateway: token bucket / queue length (sim.admission)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)  # replicas over time (sim.autoscaler)
    disaggregation: DisaggregationConfig = field(default_factory=DisaggregationConfig)  # P/D pools (sim.disaggregation)
    pd_layout: str | None = None                # "4C" = 4 co-located replicas, "1P3D" = 1 prefill + 3 decode (sets both)
    allocator: Allocator = "paged"              # contiguous-*: reservation baselines (vLLM paper, Fig. 2)
    num_gpu_blocks_override: int | None = None  # --num-gpu-blocks-override
    speculative_config: SpeculativeConfig | None = None  # --speculative-config (sim.spec_decode); None: off
    kv_offloading_size: float | None = None     # --kv-offloading-size: GiB of CPU tier, all TP ranks (None: off; sim.kv_offload)
    kv_offloading_backend: Literal["native", "lmcache"] = "native"   # --kv-offloading-backend
    kv_offloading_disk_size: float = 0.0        # GiB of local disk tier below the CPU tier (LMCache max_local_disk_size)
    kv_offloading_disk_gb_per_s: float = 3.0    # disk read bandwidth, GB/s (an NVMe SSD)

    _aliases = {"block_size_tokens": "block_size"}

    def validate(self, ctx: Ctx) -> None:
        if self.block_size not in (1, 8, 16, 32, 64, 128, 256):
            raise ctx.at("block_size").error("expected one of 1, 8, 16, 32, 64, 128, 256 (vLLM's choices)", self.block_size)
        if self.kv_cache_dtype not in ("auto", "fp16", "bf16", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2", "int8"):
            raise ctx.at("kv_cache_dtype").error("expected auto | fp16 | bf16 | fp8 | fp8_e4m3 | fp8_e5m2 | int8", self.kv_cache_dtype)
        positive(ctx, "swap_space", self.swap_space, allow_zero=True)
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ctx.at("gpu_memory_utilization").error("expected a fraction in (0, 1]", self.gpu_memory_utilization)
        for key in ("tensor_parallel_size", "pipeline_parallel_size", "num_replicas"):
            positive(ctx, key, getattr(self, key))
        for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "num_gpu_blocks_override"):
            if getattr(self, key) is not None:
                positive(ctx, key, getattr(self, key))
        positive(ctx, "long_prefill_token_threshold", self.long_prefill_token_threshold, allow_zero=True)
        if self.watermark is not None and not 0.0 <= self.watermark < 1.0:
            raise ctx.at("watermark").error("expected a fraction in [0, 1)", self.watermark)
        if self.scheduler == "vllm-v1" and self.preemption_mode == "swap":
            raise ctx.at("preemption_mode").error("vLLM v1 preempts by recompute only; use scheduler: vllm-v0 for swap")
        from sim.router import SCORERS
        for key, w in self.router_weights.items():
            if key not in SCORERS:
                raise ctx.at(f"router_weights.{key}").error(f"expected one of {', '.join(SCORERS)}", key)
            if w < 0:
                raise ctx.at(f"router_weights.{key}").error("expected a weight >= 0", w)
        if self.router == "weighted" and not any(w > 0 for w in self.router_weights.values()):
            raise ctx.at("router_weights").error("weighted routing needs at least one positive weight, e.g. {prefix: 2, queue: 1}",
                                                 dict(self.router_weights))
        positive(ctx, "router_scrape_interval_s", self.router_scrape_interval_s, allow_zero=True)
        if self.tensor_parallel_size & (self.tensor_parallel_size - 1):
            raise ctx.at("tensor_parallel_size").error("expected a power of two", self.tensor_parallel_size)
        self._validate_offloading(ctx)

    def _validate_offloading(self, ctx: Ctx) -> None:
        """KV offloading tiers (sim.kv_offload): sizes, and the engines they work with."""
        positive(ctx, "kv_offloading_disk_size", self.kv_offloading_disk_size, allow_zero=True)
        positive(ctx, "kv_offloading_disk_gb_per_s", self.kv_offloading_disk_gb_per_s)
        size = self.kv_offloading_size
        if size is None:
            if self.kv_offloading_disk_size > 0:
                raise ctx.at("kv_offloading_disk_size").error(
                    "a disk tier sits below the CPU tier: set engine.kv_offloading_size too", self.kv_offloading_disk_size)
            return
        positive(ctx, "kv_offloading_size", size, allow_zero=True)
        if not self.enable_prefix_caching:
            raise ctx.at("kv_offloading_size").error(
                "KV offloading looks blocks up by their prefix hashes: needs enable_prefix_caching: true", size)
        if self.scheduler != "vllm-v1" or self.allocator != "paged":
            raise ctx.at("kv_offloading_size").error(
                "KV offloading is simulated for scheduler: vllm-v1 with the paged allocator", size)
        if self.kv_offloading_disk_size > 0 and self.kv_offloading_backend != "lmcache":
            raise ctx.at("kv_offloading_disk_size").error(
                "vLLM's native offloading has no disk tier: set engine.kv_offloading_backend: lmcache",
                self.kv_offloading_disk_size)


@dataclass(frozen=True, slots=True)
class SLOConfig:
    """Latency targets (ms), as `vllm bench serve --goodput ttft:X tpot:Y e2el:Z`."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: float | None = None
    e2el_ms: float | None = None
    percentile: float = 99.0                    # planner: which percentile must meet the targets

    def validate(self, ctx: Ctx) -> None:
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
            if getattr(self, key) is not None:
                positive(ctx, key, getattr(self, key))
        if not 0 < self.percentile < 100:
            raise ctx.at("percentile").error("expected a percentile in (0, 100)", self.percentile)


@dataclass(frozen=True, slots=True)
class RunConfig:
    """How long and how reproducibly to run."""

    seed: int = 0
    num_requests: int | None = None
    duration_s: float | None = None
    warmup_requests: int = 0                    # first N requests excluded from metrics
    warmup_s: float = 0.0                       # requests arriving before this excluded from metrics
    max_sim_time_s: float | None = None         # hard stop (unstable loads); None = run to completion
    check_invariants: bool = False              # debug: allocator invariants after every step
    record_steps: bool = True                   # keep the per-step table
    on_too_long: Literal["error", "drop", "truncate"] = "error"   # requests longer than max_model_len:
    # error = refuse the scenario; drop = vLLM's 400 for those requests (counted, not run);
    # truncate = keep the last tokens of the prompt (SamplingParams.truncate_prompt_tokens)

    def validate(self, ctx: Ctx) -> None:
        if self.num_requests is not None:
            positive(ctx, "num_requests", self.num_requests)
        if self.duration_s is not None:
            positive(ctx, "duration_s", self.duration_s)
        positive(ctx, "warmup_requests", self.warmup_requests, allow_zero=True)
        positive(ctx, "warmup_s", self.warmup_s, allow_zero=True)


@dataclass(frozen=True, slots=True)
class HardwareSection:
    """`hardware: {gpu: H100-SXM, profile: path/to/profile.json, price_per_hour_usd: ..., ...}`."""

    gpu: str = "H100-SXM"
    profile: str | None = None                  # calibrated profile JSON; None = datasheet roofline
    constant_step_s: float | None = None        # a fixed step time (step-clock validation, teaching)
    overrides: dict[str, float] = field(default_factory=dict)  # any HardwareSpec field, e.g. price_per_hour_usd

    def validate(self, ctx: Ctx) -> None:
        from sim.hardware import PRESETS, find_preset
        if find_preset(self.gpu) is None:
            raise ctx.at("gpu").error(f"unknown GPU; expected one of {', '.join(PRESETS)}", self.gpu)
        if self.constant_step_s is not None:
            positive(ctx, "constant_step_s", self.constant_step_s)
        if self.profile is not None and self.constant_step_s is not None:
            raise ctx.at("constant_step_s").error("give either profile or constant_step_s, not both")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario, resolved.  `raw` is the parsed YAML after overrides (for the results folder)."""

    name: str
    path: str
    model: Any                                   # sim.models.ModelSpec
    hardware: HardwareSection
    engine: EngineConfig
    workload: WorkloadConfig
    slo: SLOConfig
    run: RunConfig
    raw: dict[str, Any]
    sweep: dict[str, Any] | None = None


SECTIONS = ("name", "description", "model", "hardware", "engine", "workload", "slo", "run", "sweep", "plan")


def apply_override(raw: dict[str, Any], assignment: str, file: str) -> None:
    """Apply one `key.path=value` (value parsed as YAML) to the raw mapping, in place."""
    if "=" not in assignment:
        raise ScenarioError(file, assignment, "--set expects key.path=value")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ScenarioError(file, key, f"cannot set inside '{part}': it is not a mapping")
        node = nxt
    node[parts[-1]] = value


def parse_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(str(path), "", "scenario file not found") from None
    except OSError as e:
        raise ScenarioError(str(path), "", f"cannot read: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ScenarioError(str(path), "", f"not valid YAML: {problem}{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(str(path), "", "expected a mapping of sections at the top level")
    return raw


def load_scenario(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Scenario:
    """Read, override, validate.  Raises ScenarioError (one line) on any bad input."""
    path = Path(path)
    raw = parse_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment, str(path))
    return scenario_from_dict(raw, str(path))


def v0_engine_defaults(engine: EngineConfig, raw_engine: Any, ctx: Ctx, max_model_len: int) -> EngineConfig:
    """vLLM 0.8.5's V0 defaults where the scenario gives none, and what V0 is not simulated with.

    Chunked prefill: V0's `vllm serve` turns it on only for contexts over 32K tokens
    (`EngineArgs._set_default_args_v0`).  Prefix caching: off by default in V0, and not modelled
    for it, so asking for it is refused.  Async scheduling: V0 has none (its engine schedules,
    executes and processes outputs in turn)."""
    given = raw_engine if isinstance(raw_engine, dict) else {}
    if engine.async_scheduling:
        raise ctx.at("engine.async_scheduling").error(
            "vLLM V0 has no async scheduling; leave it unset or false with scheduler: vllm-v0")
    if engine.scheduling_policy != "fcfs":
        raise ctx.at("engine.scheduling_policy").error(
            "only fcfs is simulated for scheduler: vllm-v0 (priority is modelled for vllm-v1)", engine.scheduling_policy)
    if "enable_prefix_caching" in given and engine.enable_prefix_caching:
        raise ctx.at("engine.enable_prefix_caching").error(
            "prefix caching is not simulated for scheduler: vllm-v0; set it to false (V0's default)")
    chunked = engine.enable_chunked_prefill if "enable_chunked_prefill" in given else max_model_len > 32768
    return replace(engine, enable_prefix_caching=False, enable_chunked_prefill=chunked, async_scheduling=False)


def apply_pd_layout(engine: EngineConfig, ctx: Ctx) -> EngineConfig:
    """`pd_layout: NC` (N co-located replicas) or `xPyD` (x prefill + y decode replicas)."""
    import re
    text = str(engine.pd_layout).strip().upper()
    m = re.fullmatch(r"(\d+)C", text)
    if m and int(m.group(1)) > 0:
        return replace(engine, num_replicas=int(m.group(1)),
                       disaggregation=replace(engine.disaggregation, prefill_replicas=0))
    m = re.fullmatch(r"(\d+)P(\d+)D", text)
    if m and int(m.group(1)) > 0 and int(m.group(2)) > 0:
        return replace(engine, num_replicas=int(m.group(2)),
                       disaggregation=replace(engine.disaggregation, prefill_replicas=int(m.group(1))))
    raise ctx.error("expected NC (N co-located replicas) or xPyD (x prefill + y decode replicas), e.g. 4C or 1P3D",
                    engine.pd_layout)


def check_pipeline(engine: EngineConfig, model: Any, ctx: Ctx) -> None:
    """What pipeline parallelism is simulated with: vLLM v1's synchronous batch queue.  vLLM 0.32
    runs PP with async scheduling only on its V2 model runner (a queue of pp + 1 batches and a
    decode stagger, not modelled); with the V1 runner it turns async scheduling off, as here."""
    pp = engine.pipeline_parallel_size
    key = ctx.at("engine.pipeline_parallel_size")
    if pp > model.num_layers:
        raise key.error(f"exceeds {model.name}'s {model.num_layers} layers (every stage needs one)", pp)
    if engine.async_scheduling:
        raise ctx.at("engine.async_scheduling").error(
            "pipeline parallelism is simulated with vLLM's synchronous batch queue (the V1 model runner "
            "turns async scheduling off with PP); leave it unset or false")
    if engine.scheduler != "vllm-v1":
        raise key.error("pipeline parallelism is simulated for scheduler: vllm-v1 only", pp)
    if engine.disaggregation.enabled or engine.pd_layout is not None:
        raise key.error("pipeline parallelism is not simulated with prefill/decode disaggregation", pp)
    if engine.speculative_config is not None:
        raise key.error("pipeline parallelism is not simulated with speculative decoding (speculative_config)", pp)
    if engine.kv_offloading_size is not None:
        raise key.error("pipeline parallelism is not simulated with a KV offloading tier (kv_offloading_size)", pp)
    if getattr(model, "num_experts", 0) or getattr(model, "kv_lora_rank", 0):
        raise key.error("pipeline parallelism is simulated for dense models with ordinary attention only "
                        f"({model.name} has experts or latent attention)", pp)


def scenario_from_dict(raw: dict[str, Any], file: str) -> Scenario:
    from sim.model_catalog import load_model

    ctx = Ctx(file)
    for key in raw:
        if key not in SECTIONS:
            import difflib
            hint = difflib.get_close_matches(str(key), SECTIONS, n=1)
            raise ctx.at(str(key)).error("unknown section" + (f"; did you mean '{hint[0]}'?" if hint else f"; expected one of: {', '.join(SECTIONS)}"))
    if "model" not in raw:
        raise ctx.at("model").error("required section is missing (a preset name, a config.json path or a mapping)")
    model = load_model(raw["model"], ctx.at("model"))
    hardware = build(HardwareSection, raw.get("hardware"), ctx.at("hardware"))
    engine = build(EngineConfig, raw.get("engine"), ctx.at("engine"))
    workload = build(WorkloadConfig, raw.get("workload"), ctx.at("workload"))
    slo = build(SLOConfig, raw.get("slo"), ctx.at("slo"))
    run = build(RunConfig, raw.get("run"), ctx.at("run"))
    sweep = raw.get("sweep")
    if sweep is not None and not isinstance(sweep, dict):
        raise ctx.at("sweep").error("expected a mapping of axis -> list of values", sweep)
    max_len = engine.max_model_len or model.max_model_len
    if engine.scheduler == "vllm-v0":
        engine = v0_engine_defaults(engine, raw.get("engine"), ctx, max_len)
    if engine.max_model_len is not None and engine.max_model_len > model.max_model_len:
        raise ctx.at("engine.max_model_len").error(
            f"exceeds the model's maximum context ({model.max_model_len} tokens)", engine.max_model_len)
    mbt = engine.max_num_batched_tokens
    if mbt is not None and not engine.enable_chunked_prefill and mbt < max_len:
        raise ctx.at("engine.max_num_batched_tokens").error(
            f"must be >= max_model_len ({max_len}) when chunked prefill is disabled (vLLM refuses this)", mbt)
    if engine.pipeline_parallel_size > 1:
        check_pipeline(engine, model, ctx)
    if engine.pd_layout is not None:
        engine = apply_pd_layout(engine, ctx.at("engine.pd_layout"))
    if engine.disaggregation.enabled:
        if engine.scheduler != "vllm-v1" or engine.allocator != "paged":
            raise ctx.at("engine.disaggregation").error(
                "prefill/decode disaggregation runs with scheduler: vllm-v1 and the paged allocator")
        if workload.n != 1:
            raise ctx.at("workload.n").error("parallel sampling is not simulated with disaggregation", workload.n)
    if engine.allocator != "paged":
        raw_engine = raw.get("engine")
        given: dict[str, Any] = raw_engine if isinstance(raw_engine, dict) else {}
        if engine.scheduler != "vllm-v1":
            raise ctx.at("engine.allocator").error(
                "the contiguous baselines run with scheduler: vllm-v1 only", engine.allocator)
        if "enable_prefix_caching" in given and engine.enable_prefix_caching:
            raise ctx.at("engine.enable_prefix_caching").error(
                f"prefix caching needs the paged allocator (allocator is {engine.allocator})")
        engine = replace(engine, enable_prefix_caching=False)   # contiguous systems have no prefix cache
    if engine.speculative_config is not None:
        spec_ctx = ctx.at("engine.speculative_config")
        if engine.scheduler != "vllm-v1" or engine.allocator != "paged" or engine.disaggregation.enabled:
            raise spec_ctx.error("speculative decoding runs with scheduler: vllm-v1, the paged allocator and no disaggregation")
        if engine.async_scheduling:
            raise ctx.at("engine.async_scheduling").error(
                "speculative decoding is simulated with synchronous scheduling only; set async_scheduling: false")
    name = str(raw.get("name") or Path(file).stem)
    return Scenario(name=name, path=file, model=model, hardware=hardware, engine=engine, workload=workload,
                    slo=slo, run=run, raw=raw, sweep=sweep)
