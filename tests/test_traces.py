"""Trace readers (against the real Azure and Mooncake files when present) and trace replay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sim.errors import ScenarioError
from sim.schema import Ctx, build
from sim.trace_replay import TraceConfig, replay
from sim.traces import MOONCAKE_ID_BASE, _read_cached, read_trace
from sim.workload import WorkloadConfig, generate

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
AZURE_CONV = TRACES / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
AZURE_CODE = TRACES / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
MOONCAKE_CONV = TRACES / "mooncake-fast25" / "conversation_trace.jsonl"
MOONCAKE_SYN = TRACES / "mooncake-fast25" / "synthetic_trace.jsonl"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason="../shared/traces not beside the checkout")

PATH_CTX = Ctx("scenario.yaml", "workload.trace.path")
TRACE_CTX = Ctx("scenario.yaml", "workload.trace")


def trace_cfg(**raw: Any) -> TraceConfig:
    return build(TraceConfig, raw, TRACE_CTX)


# --- real files -----------------------------------------------------------------------------------

@needs_traces
def test_azure_conv_matches_readme_facts_and_loads_fast() -> None:
    _read_cached.cache_clear()
    t0 = time.perf_counter()
    t = read_trace(AZURE_CONV, "azure", ctx=PATH_CTX)
    assert time.perf_counter() - t0 < 1.0
    assert len(t) == 19_366
    assert abs(t.prompt_tokens.mean() - 1155) < 1 and t.prompt_tokens.max() == 14_050
    assert abs(t.output_tokens.mean() - 211) < 1
    assert t.arrival_s[0] == 0.0 and np.all(np.diff(t.arrival_s) >= 0)
    assert 3400 < t.arrival_s[-1] < 3600   # one hour
    t.check()


@needs_traces
def test_azure_code_matches_readme_facts() -> None:
    t = read_trace(AZURE_CODE, "azure", ctx=PATH_CTX)
    assert len(t) == 8_819
    assert abs(t.prompt_tokens.mean() - 2048) < 1 and abs(t.output_tokens.mean() - 28) < 1


@needs_traces
def test_mooncake_conversation_facts_and_segments() -> None:
    t = read_trace(MOONCAKE_CONV, "mooncake", ctx=PATH_CTX)
    assert len(t) == 12_031
    assert abs(t.prompt_tokens.mean() - 12_035) < 1
    assert t.arrival_s[-1] == pytest.approx(3_537, abs=1)
    t.check()   # segments sum <= prompt
    assert t.segments is not None
    raw = [json.loads(line) for line in MOONCAKE_CONV.read_text().splitlines()]
    for row, segs, p in zip(raw, t.segments, t.prompt_tokens, strict=True):
        assert [s for s, _ in segs] == [MOONCAKE_ID_BASE + h for h in row["hash_ids"]]
        assert all(n == 512 for _, n in segs[:-1]) and 0 < segs[-1][1] <= 512
        assert sum(n for _, n in segs) == min(p, 512 * len(row["hash_ids"]))
    # requests 0 and 1 share their first hash id (0) and nothing else: one equal leading segment
    assert raw[0]["hash_ids"][0] == raw[1]["hash_ids"][0] and raw[0]["hash_ids"][1] != raw[1]["hash_ids"][1]
    assert t.segments[0][0] == t.segments[1][0] and t.segments[0][1] != t.segments[1][1]


@needs_traces
def test_mooncake_synthetic_loads() -> None:
    t = read_trace(MOONCAKE_SYN, "mooncake", ctx=PATH_CTX)
    assert len(t) == 3_993
    t.check()


@needs_traces
def test_bootstrap_100k_from_azure_conv_at_a_chosen_rate() -> None:
    cfg = trace_cfg(path=str(AZURE_CONV), format="azure", sample="bootstrap")
    a = replay(cfg, rate=20.0, num_requests=100_000, duration_s=None, rng=np.random.default_rng(3), ctx=TRACE_CTX)
    b = replay(cfg, rate=20.0, num_requests=100_000, duration_s=None, rng=np.random.default_rng(3), ctx=TRACE_CTX)
    assert len(a) == 100_000 and (len(a) - 1) / a.arrival_s[-1] == pytest.approx(20.0, rel=1e-9)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.prompt_tokens, b.prompt_tokens)
    src = read_trace(AZURE_CONV, "azure", ctx=PATH_CTX)
    assert set(np.unique(a.prompt_tokens)) <= set(np.unique(src.prompt_tokens))
    # the gaps keep the trace's shape: the same CV as the source's gaps, within sampling error
    cv_src = np.diff(src.arrival_s).std() / np.diff(src.arrival_s).mean()
    cv_new = np.diff(a.arrival_s).std() / np.diff(a.arrival_s).mean()
    assert cv_new == pytest.approx(cv_src, rel=0.1)


# --- small files written here ---------------------------------------------------------------------

def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_generic_csv_sorts_clamps_zero_and_reads_n(tmp_path: Path) -> None:
    p = write(tmp_path, "g.csv", "arrival_s,input_tokens,output_tokens,n\n10,5,0,1\n9.5,0,7,3\n")
    t = read_trace(p, "generic", ctx=PATH_CTX)
    assert t.arrival_s.tolist() == [0.0, 0.5]
    assert t.prompt_tokens.tolist() == [1, 5] and t.output_tokens.tolist() == [7, 1]
    assert t.n is not None and t.n.tolist() == [3, 1]


def test_generic_jsonl_with_timestamp_s_and_time_scale(tmp_path: Path) -> None:
    p = write(tmp_path, "g.jsonl", '{"timestamp_s": 2, "input_tokens": 4, "output_tokens": 5}\n\n'
                                   '{"timestamp_s": 6, "input_tokens": 8, "output_tokens": 9}\n')
    assert read_trace(p, "generic", ctx=PATH_CTX).arrival_s.tolist() == [0.0, 4.0]
    assert read_trace(p, "generic", ctx=PATH_CTX, time_scale=0.5).arrival_s.tolist() == [0.0, 2.0]


def test_mooncake_last_block_is_partial(tmp_path: Path) -> None:
    rows = [{"timestamp": 0, "input_length": 1000, "output_length": 3, "hash_ids": [7, 8]},
            {"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [7, 9, 10]}]
    p = write(tmp_path, "m.jsonl", "\n".join(json.dumps(r) for r in rows))
    t = read_trace(p, "mooncake", ctx=PATH_CTX)
    b = MOONCAKE_ID_BASE
    assert t.segments == [((b + 7, 512), (b + 8, 488)), ((b + 7, 512), (b + 9, 88))]
    assert t.arrival_s.tolist() == [0.0, 1.5]


def test_azure_small_file(tmp_path: Path) -> None:
    p = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                 "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,0\n")
    t = read_trace(p, "azure", ctx=PATH_CTX)
    assert t.arrival_s[1] == pytest.approx(4.314579, abs=1e-6)
    assert t.output_tokens.tolist() == [44, 1]


GENERIC = "arrival_s,input_tokens,output_tokens\n" + "".join(f"{i},{10 + i},{i + 1}\n" for i in range(10))


def test_replay_window_scale_rate_and_duration(tmp_path: Path) -> None:
    p = str(write(tmp_path, "w.csv", GENERIC))
    rng = np.random.default_rng(0)
    t = replay(trace_cfg(path=p, start_s=2, max_requests=5, time_scale=0.5), rate=None, num_requests=None,
               duration_s=None, rng=rng, ctx=TRACE_CTX)
    assert t.arrival_s.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0] and t.prompt_tokens.tolist() == [12, 13, 14, 15, 16]
    t = replay(trace_cfg(path=p), rate=4.0, num_requests=3, duration_s=None, rng=rng, ctx=TRACE_CTX)
    assert t.arrival_s.tolist() == [0.0, 0.25, 0.5]
    t = replay(trace_cfg(path=p), rate=None, num_requests=None, duration_s=4.5, rng=rng, ctx=TRACE_CTX)
    assert len(t) == 5
    t = replay(trace_cfg(path=p), rate=float("inf"), num_requests=None, duration_s=None, rng=rng, ctx=TRACE_CTX)
    assert np.all(t.arrival_s == 0) and len(t) == 10


def test_bootstrap_over_a_duration(tmp_path: Path) -> None:
    p = str(write(tmp_path, "w.csv", GENERIC))
    t = replay(trace_cfg(path=p, sample="bootstrap"), rate=None, num_requests=None, duration_s=500.0,
               rng=np.random.default_rng(0), ctx=TRACE_CTX)
    assert len(t) == 501 and t.arrival_s[-1] == 500.0   # every gap of this trace is 1 s


def test_trace_rows_with_synthetic_arrivals_and_lengths_with_trace_arrivals(tmp_path: Path) -> None:
    p = str(write(tmp_path, "w.csv", GENERIC))
    ctx = Ctx("scenario.yaml", "workload")
    cfg = build(WorkloadConfig, {"arrival": {"process": "constant", "rate": 2}, "trace": {"path": p}}, ctx)
    t = generate(cfg, num_requests=4, duration_s=None, rng=np.random.default_rng(0), ctx=ctx)
    assert t.arrival_s.tolist() == [0.5, 1.0, 1.5, 2.0] and t.prompt_tokens.tolist() == [10, 11, 12, 13]
    cfg = build(WorkloadConfig, {"arrival": {"process": "trace"}, "trace": {"path": p, "use_lengths": False},
                                 "lengths": {"input": {"dist": "fixed", "value": 77}}}, ctx)
    t = generate(cfg, num_requests=None, duration_s=None, rng=np.random.default_rng(0), ctx=ctx)
    assert t.arrival_s.tolist() == list(range(10)) and np.all(t.prompt_tokens == 77)


def test_relative_path_is_beside_the_scenario_file(tmp_path: Path) -> None:
    write(tmp_path, "w.csv", GENERIC)
    scenario = write(tmp_path, "s.yaml", "")
    ctx = Ctx(str(scenario), "workload.trace")
    t = replay(build(TraceConfig, {"path": "w.csv"}, ctx), rate=None, num_requests=None, duration_s=None,
               rng=np.random.default_rng(0), ctx=ctx)
    assert len(t) == 10


# --- errors: one line, naming the key and the trace file ------------------------------------------

BAD_FILES: list[tuple[str, str, str, str]] = [
    ("generic", "cols.csv", "time,input_tokens,output_tokens\n1,2,3\n", "missing column 'timestamp_s'"),
    ("generic", "cell.csv", "arrival_s,input_tokens,output_tokens\n0,2,3\n1,abc,3\n", "line 3"),
    ("generic", "neg.csv", "arrival_s,input_tokens,output_tokens\n0,-2,3\n", "line 2"),
    ("generic", "frac.csv", "arrival_s,input_tokens,output_tokens\n0,2.5,3\n", "expected an integer"),
    ("generic", "time.csv", "arrival_s,input_tokens,output_tokens\nsoon,2,3\n", "'arrival_s'"),
    ("generic", "n.csv", "arrival_s,input_tokens,output_tokens,n\n0,2,3,0\n", "'n'"),
    ("generic", "bad.jsonl", '{"arrival_s": 0, "input_tokens": 1, "output_tokens": 1}\n{oops\n', "line 2"),
    ("generic", "empty.csv", "", "cannot read trace"),
    ("azure", "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", "line 2"),
    ("azure", "b.csv", "TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:15:46.6,1,2\n", "ContextTokens"),
    ("mooncake", "m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n', "'hash_ids'"),
    ("mooncake", "h.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": ["x"]}\n',
     "list of non-negative integers"),
    ("mooncake", "t.jsonl", '{"timestamp": "now", "input_length": 5, "output_length": 1, "hash_ids": []}\n',
     "'timestamp'"),
]


@pytest.mark.parametrize(("fmt", "name", "text", "expect"), BAD_FILES)
def test_bad_trace_is_one_line_error(tmp_path: Path, fmt: str, name: str, text: str, expect: str) -> None:
    p = write(tmp_path, name, text)
    with pytest.raises(ScenarioError) as e:
        read_trace(p, fmt, ctx=PATH_CTX)
    msg = str(e.value)
    assert "\n" not in msg and "workload.trace.path" in msg and str(p) in msg and expect in msg


def test_missing_file_and_too_few_rows(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as e:
        read_trace(tmp_path / "nope.csv", "generic", ctx=PATH_CTX)
    assert "workload.trace.path" in str(e.value) and "nope.csv" in str(e.value) and "\n" not in str(e.value)
    p = str(write(tmp_path, "w.csv", GENERIC))
    with pytest.raises(ScenarioError, match="workload.trace.sample"):
        replay(trace_cfg(path=p), rate=None, num_requests=11, duration_s=None,
               rng=np.random.default_rng(0), ctx=TRACE_CTX)
    with pytest.raises(ScenarioError, match="workload.trace.start_s"):
        replay(trace_cfg(path=p, start_s=100), rate=None, num_requests=None, duration_s=None,
               rng=np.random.default_rng(0), ctx=TRACE_CTX)
