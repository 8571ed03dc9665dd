"""Compare two step traces (vLLM's and pagesim's) step by step; find the first divergence.

Pure functions over `StepRecord` lists: no vLLM, no files unless asked.  Steps are aligned by
index; a step present on one side only is compared against "nothing happened" (writers leave
empty steps out), so a missing step is a divergence whenever the other side did something.

Per step the *decisions* are compared exactly: ``scheduled`` (ids, token counts *and* order,
since vLLM's order is running-queue order then admissions), ``preempted`` (in victim order),
``finished``, ``new_prefix_hits``; then the *state* after the step: ``num_free_blocks``,
``num_running``, ``num_waiting`` exactly and ``kv_cache_usage`` within ``usage_tol``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .step_trace import StepRecord, read_trace

DECISION_FIELDS = ("scheduled", "preempted", "finished", "new_prefix_hits")
STATE_FIELDS = ("num_free_blocks", "num_running", "num_waiting", "kv_cache_usage")
FIELDS = DECISION_FIELDS + STATE_FIELDS


@dataclass(frozen=True)
class Divergence:
    """The first step where the two traces disagree."""

    step: int
    clock_s: float
    fields: tuple[str, ...]          # the fields that differ, in FIELDS order
    request_id: str | None           # the first request the decisions differ on; None if only state differs
    left: StepRecord | None          # None: that side did nothing at this step
    right: StepRecord | None


@dataclass(frozen=True)
class Comparison:
    """Everything `compare_traces` finds: the table, the summary, the first divergence, the report."""

    labels: tuple[str, str]
    table: pd.DataFrame              # one row per step: both sides' values and a *_ok column per field
    summary: dict[str, Any]
    first_divergence: Divergence | None
    report: str                      # one paragraph for a human

    @property
    def identical(self) -> bool:
        return self.first_divergence is None


def _same(field: str, a: StepRecord | None, b: StepRecord | None, usage_tol: float) -> bool:
    if field in STATE_FIELDS and (a is None or b is None):
        return a is None and b is None
    va = getattr(a, field) if a is not None else _EMPTY[field]
    vb = getattr(b, field) if b is not None else _EMPTY[field]
    if field == "scheduled":
        return list(va.items()) == list(vb.items())
    if field == "kv_cache_usage":
        return abs(va - vb) <= usage_tol
    return bool(va == vb)


_EMPTY: dict[str, Any] = {"scheduled": {}, "preempted": [], "finished": [], "new_prefix_hits": {}}


def _cell(value: Any) -> Any:
    """Table cell: dicts as 'id:n id:n', lists as 'id id', numbers as they are."""
    if isinstance(value, dict):
        return " ".join(f"{k}:{v}" for k, v in value.items())
    if isinstance(value, list):
        return " ".join(value)
    return value


def _first_request(fields: Sequence[str], a: StepRecord | None, b: StepRecord | None) -> str | None:
    """The first request id on which the differing decision fields disagree."""
    for field in fields:
        if field not in DECISION_FIELDS:
            continue
        va = getattr(a, field) if a is not None else _EMPTY[field]
        vb = getattr(b, field) if b is not None else _EMPTY[field]
        ia = list(va.items()) if isinstance(va, dict) else list(va)
        ib = list(vb.items()) if isinstance(vb, dict) else list(vb)
        for x, y in zip(ia, ib, strict=False):
            if x != y:
                return x[0] if isinstance(x, tuple) else x
        longer = ia if len(ia) > len(ib) else ib
        if len(ia) != len(ib):
            item = longer[min(len(ia), len(ib))]
            return item[0] if isinstance(item, tuple) else item
    return None


def _did(rec: StepRecord | None, rid: str | None) -> str:
    """What one side did with one request at one step, in words."""
    if rec is None:
        return "did nothing this step"
    if rid is None:
        return "made the same decisions"
    acts = []
    if rid in rec.scheduled:
        pos = list(rec.scheduled).index(rid)
        n = rec.scheduled[rid]
        acts.append(f"scheduled {n} token{'s' if n != 1 else ''} (position {pos} of {len(rec.scheduled)})")
    else:
        acts.append(f"did not schedule it ({len(rec.scheduled)} requests scheduled)")
    if rid in rec.new_prefix_hits:
        acts.append(f"admitted it with {rec.new_prefix_hits[rid]} prefix-cached tokens")
    if rid in rec.preempted:
        acts.append("preempted it")
    if rid in rec.finished:
        acts.append("finished it")
    return ", ".join(acts)


def _state(rec: StepRecord | None) -> str:
    if rec is None:
        return "no record"
    return (f"running={rec.num_running} waiting={rec.num_waiting} free_blocks={rec.num_free_blocks} "
            f"usage={rec.kv_cache_usage:.3f} preempted=[{' '.join(rec.preempted)}]")


def _side_stats(records: Sequence[StepRecord]) -> dict[str, Any]:
    admissions = sum(len(r.new_prefix_hits) for r in records)
    with_hit = sum(1 for r in records for v in r.new_prefix_hits.values() if v > 0)
    return {
        "steps": len(records),
        "preemptions": sum(len(r.preempted) for r in records),
        "finished": sum(len(r.finished) for r in records),
        "scheduled_tokens": sum(sum(r.scheduled.values()) for r in records),
        "admissions": admissions,
        "prefix_hit_tokens": sum(sum(r.new_prefix_hits.values()) for r in records),
        "admissions_with_prefix_hit_pct": 100.0 * with_hit / admissions if admissions else 0.0,
    }


def compare_traces(left: Sequence[StepRecord], right: Sequence[StepRecord],
                   labels: tuple[str, str] = ("vllm", "pagesim"), usage_tol: float = 1e-9) -> Comparison:
    """Compare two traces step by step; see the module docstring for what counts as equal."""
    la, lb = labels
    by_a = {r.step: r for r in left}
    by_b = {r.step: r for r in right}
    rows: list[dict[str, Any]] = []
    first: Divergence | None = None
    for step in sorted(by_a.keys() | by_b.keys()):
        a, b = by_a.get(step), by_b.get(step)
        clock_s = (a or b).clock_s  # type: ignore[union-attr]
        row: dict[str, Any] = {"step": step, "clock_s": clock_s}
        bad = []
        for field in FIELDS:
            ok = _same(field, a, b, usage_tol)
            row[f"{la}_{field}"] = _cell(getattr(a, field)) if a is not None else None
            row[f"{lb}_{field}"] = _cell(getattr(b, field)) if b is not None else None
            row[f"{field}_ok"] = ok
            if not ok:
                bad.append(field)
        row["all_ok"] = not bad
        rows.append(row)
        if bad and first is None:
            first = Divergence(step, clock_s, tuple(bad), _first_request(bad, a, b), a, b)
    table = pd.DataFrame(rows)
    n = len(rows)
    summary: dict[str, Any] = {
        "steps_compared": n,
        "steps_identical": int(table["all_ok"].sum()) if n else 0,
        "pct_identical": 100.0 * float(table["all_ok"].mean()) if n else 100.0,
        "first_divergent_step": first.step if first else None,
        "field_agreement_pct": {f: 100.0 * float(table[f"{f}_ok"].mean()) if n else 100.0 for f in FIELDS},
        la: _side_stats(left),
        lb: _side_stats(right),
    }
    return Comparison(labels, table, summary, first, _report(first, summary, labels))


def _report(first: Divergence | None, summary: dict[str, Any], labels: tuple[str, str]) -> str:
    la, lb = labels
    head = (f"{summary['steps_compared']} steps compared, {summary['pct_identical']:.2f}% identical; "
            f"preemptions {la}={summary[la]['preemptions']} {lb}={summary[lb]['preemptions']}; "
            f"prefix-hit tokens {la}={summary[la]['prefix_hit_tokens']} {lb}={summary[lb]['prefix_hit_tokens']}.")
    if first is None:
        return f"The traces agree at every step. {head}"
    who = f"request {first.request_id!r}" if first.request_id else "the queue state (same decisions)"
    return (f"First divergence at step {first.step} (t={first.clock_s:.6g} s) on {who}; fields that differ: "
            f"{', '.join(first.fields)}. {la} {_did(first.left, first.request_id)}; "
            f"{lb} {_did(first.right, first.request_id)}. After the step, {la}: {_state(first.left)}; "
            f"{lb}: {_state(first.right)}. {head}")


def compare_files(left_path: str | Path, right_path: str | Path,
                  labels: tuple[str, str] = ("vllm", "pagesim"), usage_tol: float = 1e-9) -> Comparison:
    """`compare_traces` on two JSON-lines traces written by `step_trace.write_trace`."""
    _, left = read_trace(left_path)
    _, right = read_trace(right_path)
    return compare_traces(left, right, labels, usage_tol)
