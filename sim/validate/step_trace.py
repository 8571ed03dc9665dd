"""The step trace: what one engine step decided, written the same way by vLLM's driver and by pagesim.

A trace is a JSON-lines file: one header record (``{"kind": "header", ...}``: who wrote it, the
vLLM version, the job's scheduler settings) then one ``{"kind": "step", ...}`` record per engine
step.  A *step* is one call of vLLM's ``EngineCore.step`` (sync) or ``step_with_batch_queue``
(async scheduling): requests whose arrival is at or before ``clock_s`` are added, ``schedule()``
runs, and a model output is applied with ``update_from_output()``.  The clock is a step clock:
step ``k`` happens at ``k * step_s``; steps where nothing was scheduled, preempted or finished are
not written (vLLM's flush step after the last request finishes).

Stdlib only: the vLLM driver imports this module under vLLM's own interpreter, where pagesim is
not installed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRACE_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One engine step.  Dict and list fields keep vLLM's order, which is part of the decision:
    ``scheduled`` lists the running requests first (in ``Scheduler.running`` order), then the
    requests admitted from the waiting queue this step."""

    step: int                            # step index; clock_s == step * step_s
    clock_s: float                       # when schedule() ran, seconds
    scheduled: dict[str, int]            # req_id -> num_scheduled_tokens (SchedulerOutput.num_scheduled_tokens)
    preempted: list[str] = field(default_factory=list)   # victims in the order schedule() chose them
    finished: list[str] = field(default_factory=list)    # requests that finished in update_from_output()
    num_free_blocks: int = 0             # BlockPool.get_num_free_blocks() at the end of the step
    kv_cache_usage: float = 0.0          # Scheduler.get_kv_cache_usage() at the end of the step
    num_running: int = 0                 # len(Scheduler.running) at the end of the step
    num_waiting: int = 0                 # waiting + kv_holding_waiting at the end of the step
    new_prefix_hits: dict[str, int] = field(default_factory=dict)  # req_id -> prefix-cached tokens, per admission

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy costs seconds on a 10^5-step trace.
        return {"kind": "step", **{name: getattr(self, name) for name in self.__slots__}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> StepRecord:
        return cls(
            step=int(obj["step"]),
            clock_s=float(obj["clock_s"]),
            scheduled={str(k): int(v) for k, v in obj["scheduled"].items()},
            preempted=[str(r) for r in obj.get("preempted", [])],
            finished=[str(r) for r in obj.get("finished", [])],
            num_free_blocks=int(obj.get("num_free_blocks", 0)),
            kv_cache_usage=float(obj.get("kv_cache_usage", 0.0)),
            num_running=int(obj.get("num_running", 0)),
            num_waiting=int(obj.get("num_waiting", 0)),
            new_prefix_hits={str(k): int(v) for k, v in obj.get("new_prefix_hits", {}).items()},
        )

    @property
    def is_empty(self) -> bool:
        """Nothing happened: vLLM's flush step, which traces leave out."""
        return not (self.scheduled or self.preempted or self.finished or self.new_prefix_hits)


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """Provenance of a trace: who wrote it and under which settings."""

    source: str                          # "vllm" or "pagesim"
    vllm_version: str | None = None      # vllm.__version__ of the driver's interpreter; None for pagesim
    step_s: float = 0.0                  # the step clock
    config: dict[str, Any] = field(default_factory=dict)  # the job's scheduler settings
    stats: dict[str, Any] = field(default_factory=dict)   # writer's notes: build_s, run_s, num_engine_steps
    format_version: int = TRACE_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {"kind": "header", **asdict(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TraceHeader:
        return cls(
            source=str(obj.get("source", "?")),
            vllm_version=obj.get("vllm_version"),
            step_s=float(obj.get("step_s", 0.0)),
            config=dict(obj.get("config", {})),
            stats=dict(obj.get("stats", {})),
            format_version=int(obj.get("format_version", TRACE_FORMAT_VERSION)),
        )


def arrival_step(arrival_s: float, step_s: float) -> int:
    """The first step whose clock (``k * step_s``) is at or after ``arrival_s``: a request that
    arrives while step k runs joins before step k+1 is scheduled.  Both sides must use this."""
    if arrival_s <= 0.0:
        return 0
    k = max(0, math.ceil(arrival_s / step_s))
    while k > 0 and (k - 1) * step_s >= arrival_s:   # float rounding in the division
        k -= 1
    while k * step_s < arrival_s:
        k += 1
    return k


def write_trace(path: str | Path, header: TraceHeader, records: Iterable[StepRecord]) -> None:
    """Write a header then one line per step (JSON lines)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(header.to_json(), separators=(",", ":")) + "\n")
        for rec in records:
            f.write(json.dumps(rec.to_json(), separators=(",", ":")) + "\n")


def read_trace(path: str | Path) -> tuple[TraceHeader, list[StepRecord]]:
    """Read a trace written by `write_trace`; a file without a header gets ``source='?'``."""
    header = TraceHeader(source="?")
    records: list[StepRecord] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            kind = obj.get("kind", "step")
            if kind == "header":
                header = TraceHeader.from_json(obj)
            elif kind == "step":
                records.append(StepRecord.from_json(obj))
            elif kind == "request":   # an engine trace's per-request records (engine_trace.py)
                continue
            else:
                raise ValueError(f"{path}:{lineno}: unknown record kind {kind!r}")
    return header, records
