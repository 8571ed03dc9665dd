"""Autoscaling over time-varying traffic: the HPA decision by hand, provisioning delay,
cooldowns, draining and billing; the rate-curve arrival process; a whole ramp up and down."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest

from sim.autoscaler import DRAINING, OFF, PROVISIONING, READY, Autoscaler, AutoscalingConfig
from sim.config import load_scenario
from sim.errors import ScenarioError
from sim.runner import run_scenario
from sim.workload import curve_arrivals


class _Sched:
    def __init__(self) -> None:
        self.waiting: deque[int] = deque()
        self.has_work = False


class _Rep:
    def __init__(self) -> None:
        self.scheduler = _Sched()
        self.usage = 0.0

    def kv_state(self) -> tuple[float, float, float, float, float, float]:
        return (self.usage, 0.0, 0.0, 0.0, 0.0, 0.0)


CFG = AutoscalingConfig(metric="request_rate", target=8.0, min_replicas=1, max_replicas=4, interval_s=15.0,
                        provisioning_delay_s=60.0, scale_up_cooldown_s=30.0, scale_down_cooldown_s=120.0)


def test_hpa_decision_provisioning_cooldown_and_billing_by_hand() -> None:
    reps = [_Rep() for _ in range(5)]
    a = Autoscaler(CFG, 5)
    assert a.max == 4 and a.state == [READY, OFF, OFF, OFF, OFF]
    a.tick(15.0, reps, arrivals=300)             # 20 req/s on 1 ready replica: ceil(1 * 20/8) = 3
    assert a.state[:3] == [READY, PROVISIONING, PROVISIONING] and a.timeline.desired[-1] == 3
    a.tick(30.0, reps, arrivals=600)             # 40 req/s: desired 4 (max), but the cooldown holds
    assert a.state.count(PROVISIONING) == 2
    a.tick(45.0, reps, arrivals=600)             # cooldown over: one more starts
    assert a.state.count(PROVISIONING) == 3
    a.tick(75.0, reps, arrivals=120)             # the first two became ready at 75 s
    assert a.state[:3] == [READY, READY, READY]
    # billed: 1 replica for 15 s, 3 for 15 s, 3 for 15 s, 4 for 30 s
    assert a.billed_s == pytest.approx(15 + 45 + 45 + 120)


def test_tolerance_scale_down_drain_and_minimum() -> None:
    reps = [_Rep() for _ in range(3)]
    cfg = AutoscalingConfig(metric="queue_length", target=10.0, min_replicas=1, interval_s=10.0,
                            provisioning_delay_s=0.0, scale_up_cooldown_s=0.0, scale_down_cooldown_s=0.0)
    a = Autoscaler(cfg, 3)
    a.state = [READY, READY, READY]
    a.started_at = [0.0, 5.0, 7.0]
    for r in reps:
        r.scheduler.waiting.extend(range(10))
    reps[0].scheduler.waiting.append(0)          # mean 10.33: within 10 % of the target
    a.tick(10.0, reps, 0)
    assert a.state == [READY, READY, READY]
    for r in reps:
        r.scheduler.waiting.clear()
    reps[2].scheduler.has_work = True            # still finishing its requests
    a.tick(20.0, reps, 0)                        # no queue: desired = min 1; the latest started drain
    assert a.state == [READY, DRAINING, DRAINING]
    a.tick(30.0, reps, 0)                        # replica 1 is idle -> off; 2 still works
    assert a.state == [READY, OFF, DRAINING]
    reps[2].scheduler.has_work = False
    a.tick(40.0, reps, 0)
    assert a.state == [READY, OFF, OFF] and a.num_scale_downs >= 1


def test_rate_curve_arrivals_follow_the_curve() -> None:
    t = curve_arrivals(((0.0, 10.0), (100.0, 30.0), (200.0, 0.0)), None, None, np.random.default_rng(1))
    assert np.all(np.diff(t) >= 0) and t[0] >= 0 and t[-1] <= 200
    counts, _ = np.histogram(t, bins=[0, 50, 100, 150, 200])
    expected = np.array([750.0, 1250.0, 1125.0, 375.0])          # integral of the rate over each quarter
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))
    assert len(curve_arrivals(((0.0, 10.0), (100.0, 10.0)), 50, None, np.random.default_rng(1))) == 50


def _scenario(tmp_path: Path, autoscaling: str) -> Path:
    p = tmp_path / "a.yaml"
    p.write_text(f"""
name: autoscale
model: llama-3-8b
hardware: {{gpu: H100-SXM}}
engine:
  num_replicas: 4
  router: least-outstanding-tokens
  autoscaling: {autoscaling}
workload:
  arrival: {{process: poisson, curve: [[0, 2], [300, 30], [600, 2]]}}
  lengths: {{input: {{dist: uniform, low: 200, high: 1500}}, output: {{dist: uniform, low: 50, high: 400}}}}
slo: {{ttft_ms: 1000, tpot_ms: 60}}
run: {{seed: 0}}
""")
    return p


def test_a_ramp_up_and_down_scales_out_and_back_and_costs_less_than_a_fixed_fleet(tmp_path: Path) -> None:
    cfg = ("{metric: request_rate, target: 8, min_replicas: 1, interval_s: 15, provisioning_delay_s: 30, "
           "scale_up_cooldown_s: 15, scale_down_cooldown_s: 60}")
    s = run_scenario(load_scenario(_scenario(tmp_path, cfg))).summary
    again = run_scenario(load_scenario(_scenario(tmp_path, cfg))).summary
    assert s == again
    started = s["timeline_started"]
    assert started[0] == 1 and max(started) >= 3 and started[-1] <= 2       # out with the peak, back after it
    assert s["num_scale_ups"] >= 2 and s["num_scale_downs"] >= 1
    assert s["completed"] == s["num_requests"]
    fixed_cost = 4 * s["simulated_time_s"] / 3600 * s["price_per_hour_usd"] / 4
    assert s["fleet_cost_usd"] < 0.8 * fixed_cost
    assert len(s["timeline_slo_attainment"]) == len(s["timeline_t_s"])


@pytest.mark.parametrize("autoscaling, key", [
    ("{metric: kv_usage}", "engine.autoscaling.target"),
    ("{metric: kv_usage, target: 1.5}", "engine.autoscaling.target"),
    ("{metric: queue_length, target: 4, min_replicas: 3, max_replicas: 2}", "engine.autoscaling.max_replicas"),
])
def test_bad_autoscaling_settings_are_refused_in_one_line(tmp_path: Path, autoscaling: str, key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(_scenario(tmp_path, autoscaling))
    assert key in str(e.value) and "\n" not in str(e.value)


def test_a_curve_and_a_rate_together_are_refused(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "{}")
    p.write_text(p.read_text().replace("process: poisson, curve", "process: poisson, rate: 3, curve"))
    with pytest.raises(ScenarioError, match="workload.arrival.rate"):
        load_scenario(p)


def test_report_draws_replicas_and_attainment_over_time(tmp_path: Path) -> None:
    from reports.build import build_sections
    from reports.data import load
    from sim.cli import main
    cfg = "{metric: queue_length, target: 2, interval_s: 20, provisioning_delay_s: 20, scale_down_cooldown_s: 60}"
    out = tmp_path / "out"
    assert main(["run", str(_scenario(tmp_path, cfg)), "--out", str(out)]) == 0
    sec = next(s for s in build_sections(load(out)) if s.title == "Autoscaling over the run")
    assert sec.charts[0].reading.startswith("The fleet ran ") and "replica-hours" in sec.charts[0].reading
    assert len(sec.charts) == 2
