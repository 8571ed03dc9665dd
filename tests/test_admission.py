"""Admission control (token bucket, queue length), SLO classes and vLLM's priority policy:
hand-worked gateway decisions, per-class accounting, and the effect of priorities under load."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from sim.admission import Admission, AdmissionConfig
from sim.config import load_scenario
from sim.errors import ScenarioError
from sim.request import Request
from sim.runner import run_scenario
from sim.waiting_queue import PriorityWaiting


class _Sched:
    def __init__(self, waiting: int):
        self.waiting = deque(range(waiting))


class _Rep:
    def __init__(self, waiting: int):
        self.scheduler = _Sched(waiting)


def test_token_bucket_by_hand() -> None:
    a = Admission(AdmissionConfig(policy="token-bucket", rate=1.0, burst=2))
    # t=0: 2 tokens -> admit, admit, reject; t=0.5: 0.5 token -> reject; t=1.5: 1.5 -> admit (0.5 left);
    # t=2.0: 1.0 -> admit; t=2.1: 0.1 -> reject
    got = [a.admit(t, []) for t in (0.0, 0.0, 0.0, 0.5, 1.5, 2.0, 2.1)]
    assert got == [True, True, False, False, True, True, False]
    assert a.num_rejected == 3


def test_queue_length_sheds_only_when_every_replica_is_saturated() -> None:
    a = Admission(AdmissionConfig(policy="queue-length", max_waiting=3))
    assert a.admit(0.0, [_Rep(3), _Rep(2)])           # one replica still has room
    assert not a.admit(0.0, [_Rep(3), _Rep(5)])
    assert a.num_rejected == 1


def test_priority_queue_orders_by_priority_then_arrival_and_reinserts_by_key() -> None:
    q = PriorityWaiting()
    reqs = [Request(0, 0.3, 10, 5, priority=1), Request(1, 0.1, 10, 5, priority=1),
            Request(2, 0.2, 10, 5, priority=0), Request(3, 0.0, 10, 5, priority=2)]
    for r in reqs:
        q.append(r)
    assert [r.req_id for r in q] == [2, 1, 0, 3]
    head = q.popleft()
    assert head.req_id == 2
    q.appendleft(head)                                 # a preempted request goes back by its key
    assert q[0].req_id == 2 and len(q) == 4
    q.remove(reqs[1])
    assert [r.req_id for r in q] == [2, 0, 3]


def _scenario(tmp_path: Path, engine: str, classes: bool = True, rate: float = 30) -> Path:
    p = tmp_path / "s.yaml"
    cls = """
  classes:
    - {name: interactive, share: 0.3, priority: 0, ttft_ms: 300}
    - {name: batch, share: 0.7, priority: 5, ttft_ms: 20000}""" if classes else ""
    p.write_text(f"""
name: classes
model: llama-3-8b
hardware: {{gpu: H100-SXM}}
engine: {{num_gpu_blocks_override: 1200, max_num_seqs: 32 {engine}}}
workload:
  arrival: {{process: poisson, rate: {rate}}}
  lengths: {{input: {{dist: uniform, low: 200, high: 1200}}, output: {{dist: uniform, low: 50, high: 300}}}}{cls}
slo: {{ttft_ms: 1000, tpot_ms: 100}}
run: {{seed: 1, num_requests: 600}}
""")
    return p


def test_token_bucket_end_to_end_rejects_the_excess(tmp_path: Path) -> None:
    s = run_scenario(load_scenario(_scenario(tmp_path, ", admission: {policy: token-bucket, rate: 10, burst: 5}",
                                             classes=False))).summary
    # 600 Poisson arrivals at 30/s over ~20 s; the bucket passes ~10/s + 5
    expected_admitted = 10 * s["duration"] + 5
    assert s["num_rejected"] + s["completed"] == 600
    assert abs(s["completed"] - expected_admitted) < 0.1 * expected_admitted
    assert s["admission"] == "token-bucket"
    good = s["request_goodput"] * s["duration"]
    assert s["slo_attainment"] == pytest.approx(good / 600)      # rejected requests count as misses


def test_classes_are_accounted_and_priority_serves_interactive_first(tmp_path: Path) -> None:
    fcfs = run_scenario(load_scenario(_scenario(tmp_path, ""))).summary
    prio = run_scenario(load_scenario(_scenario(tmp_path, ", scheduling_policy: priority"))).summary
    for s in (fcfs, prio):
        c = s["classes"]
        assert set(c) == {"interactive", "batch"}
        assert c["interactive"]["num_requests"] + c["batch"]["num_requests"] == 600
        assert c["interactive"]["ttft_ms_target"] == 300 and c["batch"]["tpot_ms_target"] == 100   # fallback to slo
        assert abs(c["interactive"]["num_requests"] / 600 - 0.3) < 0.06
    # under overload, priority scheduling moves the interactive class ahead of the batch class
    assert prio["classes"]["interactive"]["median_ttft_ms"] < 0.5 * fcfs["classes"]["interactive"]["median_ttft_ms"]
    assert prio["classes"]["batch"]["median_ttft_ms"] > fcfs["classes"]["batch"]["median_ttft_ms"]
    assert prio["classes"]["interactive"]["slo_attainment"] > fcfs["classes"]["interactive"]["slo_attainment"]


def test_classes_draw_is_deterministic_and_leaves_other_draws_alone(tmp_path: Path) -> None:
    from sim.runner import make_workload
    with_cls = make_workload(load_scenario(_scenario(tmp_path, "")))
    without = make_workload(load_scenario(_scenario(tmp_path, "", classes=False)))
    assert np.array_equal(with_cls.arrival_s, without.arrival_s)
    assert np.array_equal(with_cls.prompt_tokens, without.prompt_tokens)
    again = make_workload(load_scenario(_scenario(tmp_path, "")))
    assert np.array_equal(with_cls.extra["slo_class"], again.extra["slo_class"])


@pytest.mark.parametrize("engine, key", [
    (", admission: {policy: token-bucket}", "engine.admission.rate"),
    (", admission: {policy: queue-length}", "engine.admission.max_waiting"),
    (", admission: {policy: none, rate: 3}", "engine.admission.rate"),
    (", admission: {policy: token-bucket, rate: -1}", "engine.admission.rate"),
    (", scheduling_policy: lifo", "engine.scheduling_policy"),
])
def test_bad_admission_settings_are_refused_in_one_line(tmp_path: Path, engine: str, key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(_scenario(tmp_path, engine))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_duplicate_class_names_are_refused(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "")
    p.write_text(p.read_text().replace("name: batch", "name: interactive"))
    with pytest.raises(ScenarioError, match=r"workload.classes\[1\].name"):
        load_scenario(p)


def test_report_has_a_class_section_for_a_run_with_classes(tmp_path: Path) -> None:
    from reports.build import build_sections
    from reports.data import load
    from sim.cli import main
    out = tmp_path / "out"
    assert main(["run", str(_scenario(tmp_path, ", admission: {policy: queue-length, max_waiting: 8}")),
                 "--out", str(out)]) == 0
    sec = next(s for s in build_sections(load(out)) if s.title == "SLO classes and admission control")
    assert "queue-length" in sec.intro_html and "interactive" in sec.tables_html[0]
    assert sec.charts[0].reading.startswith("Class ")
