"""The engine trace: what a real vLLM engine did, step by step and request by request, on a wall clock.

Same JSON-lines file as `step_trace` (a ``header`` record, then ``step`` records that
`step_trace.read_trace` reads as `StepRecord`s, so the scheduler-only comparison applies as is),
with timing and batch shape added to each step and one ``request`` record per request:

* a step is one cycle of the driver's loop while the engine has work: add the requests that have
  arrived, ``LLMEngine.step()``, note the tokens it returned.  ``start_s`` is when the cycle began
  (seconds since the run started), ``duration_s`` the cycle's length (until the next cycle, or
  until the loop found nothing to do), ``exec_s`` the time inside ``LLMEngine.step()`` alone.
* the batch shape is pagesim's (`sim.batch.StepBatch`): a request with one new token is a decode
  (context = tokens computed before the step + 1), any other is a prefill chunk
  (``prefill_pairs`` = Σ q·(prefix + (q+1)/2)); the cost profile is fitted on these.
* a request's times are seconds since the run started: ``arrival_s`` as the job gave it (the
  client's send time), then the wall time at which ``step()`` returned each of its tokens.

Stdlib only: the engine driver imports this module under vLLM's interpreter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__:
    from .step_trace import StepRecord, TraceHeader
else:  # imported by engine_driver.py run as a script
    from step_trace import StepRecord, TraceHeader  # type: ignore[no-redef]

#: Step fields beyond `StepRecord`'s, in file order.
TIMING_FIELDS = ("start_s", "duration_s", "exec_s", "num_prefill_tokens", "num_decode_tokens",
                 "decode_ctx_tokens", "prefill_pairs")


@dataclass(frozen=True, slots=True)
class EngineStep:
    """One engine step with its wall-clock timing and batch shape; `decisions` is what the
    scheduler decided (the same record the scheduler-only comparison uses)."""

    decisions: StepRecord
    start_s: float                      # cycle start, seconds since the run started
    duration_s: float                   # cycle length: what a simulator's step time stands for
    exec_s: float                       # inside LLMEngine.step() only
    num_prefill_tokens: int             # tokens of requests scheduled for more than one token
    num_decode_tokens: int              # requests scheduled for exactly one token
    decode_ctx_tokens: int              # Σ over decodes of computed tokens + 1
    prefill_pairs: float                # Σ over prefill chunks of q·(prefix + (q+1)/2)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    def to_json(self) -> dict[str, Any]:
        return {**self.decisions.to_json(), **{k: getattr(self, k) for k in TIMING_FIELDS}}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EngineStep:
        return cls(decisions=StepRecord.from_json(obj), start_s=float(obj["start_s"]),
                   duration_s=float(obj["duration_s"]), exec_s=float(obj.get("exec_s", obj["duration_s"])),
                   num_prefill_tokens=int(obj["num_prefill_tokens"]), num_decode_tokens=int(obj["num_decode_tokens"]),
                   decode_ctx_tokens=int(obj.get("decode_ctx_tokens", 0)),
                   prefill_pairs=float(obj.get("prefill_pairs", 0.0)))


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as a client saw it; all times in seconds since the run started."""

    id: str
    arrival_s: float                    # send time (the job's arrival)
    prompt_tokens: int
    token_s: list[float] = field(default_factory=list)   # when each output token was returned
    num_preemptions: int = 0            # RequestOutput.metrics.num_preemptions when known

    @property
    def output_tokens(self) -> int:
        return len(self.token_s)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "request", "id": self.id, "arrival_s": self.arrival_s, "prompt_tokens": self.prompt_tokens,
                "token_s": self.token_s, "num_preemptions": self.num_preemptions}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RequestRecord:
        return cls(id=str(obj["id"]), arrival_s=float(obj["arrival_s"]), prompt_tokens=int(obj["prompt_tokens"]),
                   token_s=[float(t) for t in obj["token_s"]], num_preemptions=int(obj.get("num_preemptions", 0)))


@dataclass(frozen=True)
class EngineTrace:
    header: TraceHeader
    steps: list[EngineStep]
    requests: list[RequestRecord]


def write_engine_trace(path: str | Path, trace: EngineTrace) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(trace.header.to_json(), separators=(",", ":")) + "\n")
        for s in trace.steps:
            f.write(json.dumps(s.to_json(), separators=(",", ":")) + "\n")
        for r in trace.requests:
            f.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")


def is_engine_trace(path: str | Path) -> bool:
    """True when the file starts with a trace header (JSON lines), whatever wrote it."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        return json.loads(first).get("kind") == "header"
    except (json.JSONDecodeError, AttributeError):
        return False


def read_engine_trace(path: str | Path) -> EngineTrace:
    """Read a trace written by `write_engine_trace`; steps without timing are refused."""
    header = TraceHeader(source="?")
    steps: list[EngineStep] = []
    requests: list[RequestRecord] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            kind = obj.get("kind", "step")
            if kind == "header":
                header = TraceHeader.from_json(obj)
            elif kind == "step":
                if "start_s" not in obj:
                    raise ValueError(f"{path}:{lineno}: step without timing; not an engine trace")
                steps.append(EngineStep.from_json(obj))
            elif kind == "request":
                requests.append(RequestRecord.from_json(obj))
            else:
                raise ValueError(f"{path}:{lineno}: unknown record kind {kind!r}")
    return EngineTrace(header, steps, requests)
