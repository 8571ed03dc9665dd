"""sim/validate/compare.py and step_trace.py on hand-made traces (no vLLM needed)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from sim.validate.compare import compare_files, compare_traces
from sim.validate.step_trace import StepRecord, TraceHeader, arrival_step, read_trace, write_trace


def hand_trace(num_steps: int = 12) -> list[StepRecord]:
    """Four requests: r0..r3 prefill at step 0 (32 tokens each), then decode one token a step."""
    recs = []
    for k in range(num_steps):
        scheduled = {f"r{i}": 32 for i in range(4)} if k == 0 else {f"r{i}": 1 for i in range(4)}
        hits = {f"r{i}": 16 * (i % 2) for i in range(4)} if k == 0 else {}
        recs.append(StepRecord(step=k, clock_s=0.01 * k, scheduled=scheduled, num_free_blocks=91 - k // 16,
                               kv_cache_usage=0.1, num_running=4, num_waiting=2, new_prefix_hits=hits))
    return recs


def test_identical_traces_agree_everywhere() -> None:
    trace = hand_trace()
    cmp = compare_traces(trace, list(trace))
    assert cmp.identical and cmp.first_divergence is None
    assert cmp.summary["pct_identical"] == 100.0
    assert cmp.summary["steps_compared"] == 12
    assert all(v == 100.0 for v in cmp.summary["field_agreement_pct"].values())
    assert cmp.report.startswith("The traces agree at every step.")
    assert cmp.summary["vllm"]["prefix_hit_tokens"] == 32
    assert cmp.summary["vllm"]["admissions_with_prefix_hit_pct"] == 50.0


def test_divergence_at_step_7_names_the_request() -> None:
    left = hand_trace()
    right = list(left)
    rec = right[7]
    right[7] = replace(rec, scheduled={"r0": 1, "r1": 1, "r2": 1}, preempted=["r3"],
                       num_running=3, num_waiting=3)
    right[9] = replace(right[9], num_free_blocks=0)          # a later difference must not win
    cmp = compare_traces(left, right)
    div = cmp.first_divergence
    assert div is not None and div.step == 7
    assert div.request_id == "r3"
    assert div.fields == ("scheduled", "preempted", "num_running", "num_waiting")
    assert "step 7" in cmp.report and "'r3'" in cmp.report
    assert "vllm scheduled 1 token (position 3 of 4)" in cmp.report
    assert "pagesim did not schedule it" in cmp.report and "preempted it" in cmp.report
    assert cmp.summary["steps_identical"] == 10
    assert cmp.summary["pct_identical"] == pytest.approx(100 * 10 / 12)
    assert cmp.summary["pagesim"]["preemptions"] == 1 and cmp.summary["vllm"]["preemptions"] == 0
    assert not cmp.table.loc[cmp.table.step == 7, "scheduled_ok"].item()


def test_order_of_scheduling_is_a_decision() -> None:
    left = hand_trace(3)
    swapped = dict(reversed(list(left[1].scheduled.items())))
    right = [left[0], replace(left[1], scheduled=swapped), left[2]]
    div = compare_traces(left, right).first_divergence
    assert div is not None and div.step == 1 and div.fields == ("scheduled",) and div.request_id == "r0"


def test_missing_step_and_usage_tolerance() -> None:
    left = hand_trace(4)
    right = [left[0], left[1], replace(left[3], kv_cache_usage=0.1 + 1e-12)]
    cmp = compare_traces(left, right)
    assert cmp.first_divergence is not None and cmp.first_divergence.step == 2
    assert cmp.first_divergence.right is None
    assert "pagesim did nothing this step" in cmp.report
    assert cmp.summary["steps_identical"] == 3           # step 3 agrees within usage_tol


def test_queue_state_only_divergence_has_no_request() -> None:
    left = hand_trace(3)
    right = [left[0], replace(left[1], num_free_blocks=5), left[2]]
    div = compare_traces(left, right).first_divergence
    assert div is not None and div.request_id is None and div.fields == ("num_free_blocks",)


def test_trace_round_trip_and_table_csv(tmp_path) -> None:
    trace = hand_trace()
    header = TraceHeader(source="vllm", vllm_version="0.32.0", step_s=0.01, config={"block_size": 16})
    write_trace(tmp_path / "a.jsonl", header, trace)
    got_header, got = read_trace(tmp_path / "a.jsonl")
    assert got_header == header and got == trace
    assert list(got[0].scheduled) == ["r0", "r1", "r2", "r3"]
    write_trace(tmp_path / "b.jsonl", replace(header, source="pagesim"), trace)
    cmp = compare_files(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    cmp.table.to_csv(tmp_path / "table.csv", index=False)
    table = pd.read_csv(tmp_path / "table.csv")
    assert len(table) == 12 and table["all_ok"].all()
    assert table.loc[0, "vllm_scheduled"] == "r0:32 r1:32 r2:32 r3:32"


@pytest.mark.parametrize(("arrival_s", "step_s", "expected"), [
    (0.0, 0.01, 0), (-1.0, 0.01, 0), (0.01, 0.01, 1), (0.015, 0.01, 2), (0.03, 0.01, 3), (0.3, 0.1, 3),
])
def test_arrival_step(arrival_s: float, step_s: float, expected: int) -> None:
    k = arrival_step(arrival_s, step_s)
    assert k == expected
    assert k * step_s >= arrival_s and (k == 0 or (k - 1) * step_s < arrival_s)
