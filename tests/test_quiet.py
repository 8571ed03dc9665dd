"""Quiet stretches (several decode-only steps taken as one event) change nothing but speed:
the same decisions, token times and metrics as taking every step on its own."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_scheduler

from sim.cost_model import AttnCoeffs, CostProfile, StepCoster
from sim.engine import simulate
from sim.metrics import Recorder
from sim.replica import Replica
from sim.requests_table import RequestTable
from sim.router import Router

PROFILE = CostProfile(kind="roofline", gpu="x", model="x", step_overhead_s=0.0015,
                      linear_tokens=(1.0, 256.0, 8192.0), linear_seconds=(0.006, 0.0075, 0.19),
                      decode_attention={"auto": {16: AttnCoeffs(s_per_seq=2e-6, s_per_kv_token=5e-8)}},
                      prefill_attention={"auto": {16: AttnCoeffs(s_per_pair=1e-9)}})


def run(table, quiet, *, async_, caching, blocks, replicas=1, policy=None, **kw):
    reps = []
    for i in range(replicas):
        sched = make_scheduler(blocks, async_scheduling=async_, caching=caching, max_model_len=4096, **kw)
        sched.record_schedule = False
        reps.append(Replica(i, sched, StepCoster(PROFILE, 16, "auto", 1, async_), async_))
    rec = Recorder(len(table))
    policy = policy or ("least-outstanding-tokens" if replicas > 1 else "round-robin")
    router = Router(policy, replicas, 16, 1 << 20)
    route = router.route
    end = simulate(table, reps, route, rec, quiet_stretches=quiet)
    return rec, end, sum(r.scheduler.num_preemptions for r in reps)


@pytest.mark.parametrize("async_", [False, True])
@pytest.mark.parametrize("caching, blocks, replicas, policy", [
    (False, 3000, 1, None), (True, 300, 1, None), (True, 2000, 2, None),
    (False, 3000, 4, "round-robin"),          # stretches run on through arrivals routed elsewhere
    (True, 110, 3, "round-robin"),            # ... and under KV pressure
    (True, 110, 4, "least-outstanding-tokens"),   # past arrivals another replica is sure to win
])
def test_stretches_match_step_by_step(async_, caching, blocks, replicas, policy):
    rng = np.random.default_rng(11)
    n = 400
    t = np.cumsum(rng.exponential(1 / 6.0, n))
    segs = [((int(rng.integers(0, 3)), 64),) if caching and i % 2 else () for i in range(n)]
    table = RequestTable(t, rng.integers(70, 900, n), rng.integers(1, 300, n), segments=segs)
    a, end_a, pre_a = run(table, True, async_=async_, caching=caching, blocks=blocks, replicas=replicas, policy=policy)
    b, end_b, pre_b = run(table, False, async_=async_, caching=caching, blocks=blocks, replicas=replicas, policy=policy)
    assert pre_a == pre_b and a.num_steps == b.num_steps
    assert np.array_equal(a.preemptions, b.preemptions) and np.array_equal(a.replica, b.replica)
    assert np.allclose(a.first_token_s, b.first_token_s, rtol=1e-12, atol=1e-9)
    assert np.allclose(a.finish_s, b.finish_s, rtol=1e-12, atol=1e-9)
    va, wa = a.itl_samples()
    vb, wb = b.itl_samples()
    assert wa.sum() == wb.sum() and np.isclose(np.dot(va, wa), np.dot(vb, wb), rtol=1e-9)
    assert end_a == pytest.approx(end_b, rel=1e-12)
    if caching and blocks in (300, 110):
        assert pre_a > 0


@pytest.mark.parametrize("async_", [False, True])
def test_stretches_run_through_finishes(monkeypatch, async_):
    """A stretch may end with the step whose application finishes members (async: their last
    token was in flight).  Such stretches happen, often, and the run still matches the
    step-by-step engine: the same finish times, step table and KV usage after each finish."""
    from sim import quiet
    taken = {"finishing": 0, "all": 0}
    name = "plan_async" if async_ else "plan_sync"
    plan = getattr(quiet, name)

    def counting(*args, **kw):
        st = plan(*args, **kw)
        if st is not None:
            taken["all"] += 1
            taken["finishing"] += st.finishes
        return st

    monkeypatch.setattr(quiet, name, counting)
    rng = np.random.default_rng(5)
    n = 300
    t = np.cumsum(rng.exponential(1 / 4.0, n))
    table = RequestTable(t, rng.integers(70, 600, n), rng.integers(1, 200, n))
    a, end_a, _ = run(table, True, async_=async_, caching=True, blocks=2000)
    b, end_b, _ = run(table, False, async_=async_, caching=True, blocks=2000)
    assert taken["finishing"] > 50 and taken["finishing"] < taken["all"]
    assert end_a == end_b and a.num_steps == b.num_steps
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.first_token_s, b.first_token_s)
    assert a.steps.num_finished == b.steps.num_finished and sum(a.steps.num_finished) == n
    assert a.steps.kv_cache_usage == b.steps.kv_cache_usage
    assert a.steps.num_running == b.steps.num_running


@pytest.mark.parametrize("async_", [False, True])
def test_a_lone_decoding_request_takes_stretches(monkeypatch, async_):
    """Arrivals far apart (the drain at the end of a run, a night's trickle): one request decodes
    alone most of the time.  Its decode steps are taken as stretches too, with the same token
    times and step table as step by step."""
    from sim import quiet
    alone = {"stretches": 0}
    name = "plan_async" if async_ else "plan_sync"
    plan = getattr(quiet, name)

    def counting(rep, *args, **kw):
        st = plan(rep, *args, **kw)
        if st is not None and st.members == 1:
            alone["stretches"] += 1
        return st

    monkeypatch.setattr(quiet, name, counting)
    rng = np.random.default_rng(8)
    n = 40
    t = np.cumsum(rng.exponential(20.0, n))          # one request every 20 s: ~2 s of decoding each
    table = RequestTable(t, rng.integers(70, 600, n), rng.integers(50, 200, n))
    a, end_a, _ = run(table, True, async_=async_, caching=True, blocks=2000)
    b, end_b, _ = run(table, False, async_=async_, caching=True, blocks=2000)
    assert alone["stretches"] >= n // 2
    assert end_a == end_b and a.num_steps == b.num_steps
    assert np.array_equal(a.finish_s, b.finish_s) and np.array_equal(a.first_token_s, b.first_token_s)
    assert a.steps.duration_s == b.steps.duration_s and a.steps.kv_cache_usage == b.steps.kv_cache_usage
    va, wa = a.itl_samples()
    vb, wb = b.itl_samples()
    assert wa.sum() == wb.sum() and np.dot(va, wa) == pytest.approx(np.dot(vb, wb), rel=1e-12)


def _write_scenario(tmp_path, name: str, engine: str, workload: str, seed: int, n: int):
    from sim.config import load_scenario
    p = tmp_path / "s.yaml"
    p.write_text(f"""
name: {name}
model: llama-3-8b
hardware: {{gpu: H100-SXM}}
engine: {{block_size: 16, {engine}}}
workload:
  {workload}
run: {{seed: {seed}, num_requests: {n}}}
""")
    return load_scenario(p)


def _every_step_run(sc, table=None):
    """`run_scenario` with every step its own event (no quiet stretch, no run-ahead)."""
    import sim.runner as runner
    real = runner.simulate

    def every_step(*a, **kw):
        kw["quiet_stretches"] = False
        return real(*a, **kw)
    runner.simulate = every_step
    try:
        return runner.run_scenario(sc, table=table)
    finally:
        runner.simulate = real


def _scenario_runs(tmp_path, engine: str, rate: float, n: int, arrival: str = "", async_: bool = False,
                   workload: str | None = None):
    """A scenario run with the engine's shortcuts (quiet stretches, steps taken ahead of the
    clock) and one with every step its own event."""
    import sim.runner as runner
    if "speculative_config" not in engine and "pipeline_parallel_size" not in engine:
        engine = ", ".join(x for x in (f"async_scheduling: {str(async_).lower()}", engine) if x)
    lengths = "lengths: {input: {dist: uniform, low: 50, high: 1500}, output: {dist: uniform, low: 5, high: 400}}"
    sc = _write_scenario(tmp_path, "ahead", engine,
                         workload or f"arrival: {{process: poisson, rate: {rate}{arrival}}}\n  {lengths}", 4, n)
    fast = runner.run_scenario(sc)
    if workload is None:
        assert fast.summary["async_scheduling"] is (async_ and "speculative_config" not in engine)
    return fast, _every_step_run(sc)


@pytest.mark.parametrize("engine, rate", [
    ("speculative_config: {method: eagle, num_speculative_tokens: 3, acceptance_rate: 0.7}", 12.0),
    ("speculative_config: {method: ngram, num_speculative_tokens: 4, acceptance_rate: 0.5}, "
     "num_gpu_blocks_override: 900", 12.0),                                   # preemptions
    ("num_replicas: 3, router: least-outstanding-tokens, num_gpu_blocks_override: 1200", 45.0),
    ("num_replicas: 3, router: round-robin, speculative_config: {method: eagle, num_speculative_tokens: 2, "
     "acceptance_rate: 0.6}", 40.0),
    ("num_replicas: 2, router: least-outstanding-tokens, speculative_config: {method: eagle, "
     "num_speculative_tokens: 3, acceptance_rate: 0.8}", 30.0),
])
def test_steps_taken_ahead_of_the_clock_match_step_by_step(tmp_path, engine, rate):
    # sync scheduling runs steps that end before the next arrival without an event, reporting
    # open-loop finishes at once; least outstanding tokens must stop those at the next arrival
    # anywhere (a finish ahead of the clock would lower the count an arrival routed meanwhile reads)
    fast, slow = _scenario_runs(tmp_path, engine, rate, 500)
    _same_runs(fast, slow)
    if "900" in engine or "1200" in engine:
        assert fast.summary["num_preemptions"] > 0


def _same_runs(fast, slow) -> None:
    a, b = fast.requests, slow.requests
    for col in ("replica", "num_preemptions", "prefix_hit_tokens", "send_s", "first_token_s", "finish_s"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col
    assert fast.summary["num_steps"] == slow.summary["num_steps"]
    assert fast.summary["simulated_time_s"] == slow.summary["simulated_time_s"]
    # the step table, row for row (replicas record their rows in another order: by replica and start)
    key = ["replica", "start_s"]
    sa, sb = fast.steps.sort_values(key, kind="stable"), slow.steps.sort_values(key, kind="stable")
    assert len(sa) == fast.summary["num_steps"] and sa.reset_index(drop=True).equals(sb.reset_index(drop=True))


@pytest.mark.parametrize("async_, engine", [
    (False, ""), (True, ""), (True, "num_gpu_blocks_override: 700"),
    (False, "speculative_config: {method: eagle, num_speculative_tokens: 3, acceptance_rate: 0.7}")])
@pytest.mark.parametrize("concurrency", [3, 40])
def test_closed_loop_shortcuts_match_step_by_step(tmp_path, async_, engine, concurrency):
    # max_concurrency: a finish frees a slot and the next request is sent at that instant, once
    # the arrival process resumes; until then the horizon must already say "now", or a quiet
    # stretch (or a run-ahead) planned right after the finish runs past the send (the stretches
    # did, until the horizon learned it: 20,966 steps instead of 19,783 at concurrency 3)
    fast, slow = _scenario_runs(tmp_path, engine, 1000.0, 300, f", max_concurrency: {concurrency}", async_)
    _same_runs(fast, slow)


LENGTHS = "lengths: {input: {dist: uniform, low: 50, high: 1200}, output: {dist: uniform, low: 5, high: 300}}"


@pytest.mark.parametrize("workload, engine", [
    (f"arrival: {{process: poisson, rate: 30}}\n  {LENGTHS}", "pipeline_parallel_size: 2, num_gpu_blocks_override: 900"),
    (f"arrival: {{process: poisson, rate: 1000, max_concurrency: 8}}\n  {LENGTHS}",
     "async_scheduling: true, num_gpu_blocks_override: 1200, kv_offloading_size: 2"),
    (f"arrival: {{process: poisson, rate: 1000, max_concurrency: 8}}\n  {LENGTHS}", "pipeline_parallel_size: 2"),
    (f"arrival: {{process: poisson, rate: 30}}\n  {LENGTHS}\n  shared_prefix: {{num_prefixes: 4, tokens: 512, assign: random}}",
     "async_scheduling: true, num_replicas: 3, router: least-kv-usage, num_gpu_blocks_override: 900"),
    (f"arrival: {{process: poisson, rate: 20}}\n  {LENGTHS}\n  n: 3",
     "async_scheduling: true, scheduling_policy: priority, num_gpu_blocks_override: 900"),
    ("lengths: {input: {dist: uniform, low: 50, high: 400}, output: {dist: uniform, low: 5, high: 200}}\n  "
     "sessions: {num_users: 20, turns: {dist: uniform, low: 2, high: 6}, think_time_s: {dist: exponential, mean: 1.0}}",
     "speculative_config: {method: eagle, num_speculative_tokens: 3, acceptance_rate: 0.7}, num_gpu_blocks_override: 900"),
    (f"arrival: {{process: poisson, rate: 30}}\n  {LENGTHS}\n  shared_prefix: {{num_prefixes: 2, tokens: 256}}",
     "scheduler: vllm-v0, swap_space: 1, async_scheduling: false, num_gpu_blocks_override: 900"),
])
def test_engine_shortcuts_match_step_by_step_across_features(tmp_path, workload, engine):
    # quiet stretches, lane stretches (PP) and the sync run-ahead against every step as its own
    # event, over the features that feed the horizon or the replica state: a closed loop, KV
    # offload loads, PP, routers reading KV usage, parallel sampling with priority preemption,
    # sessions with speculative decoding, the v0 scheduler (a sweep of 19 engine set-ups x 5
    # workloads agreed; these cover each feature once)
    fast, slow = _scenario_runs(tmp_path, engine, 0.0, 250, workload=workload)
    _same_runs(fast, slow)


@pytest.mark.parametrize("engine", [
    "async_scheduling: false",
    "speculative_config: {method: eagle, num_speculative_tokens: 3, acceptance_rate: 0.7}",
    "pipeline_parallel_size: 2",
])
def test_arrivals_on_a_step_boundary_match_step_by_step(tmp_path, engine):
    # a loop running ahead on one replica sends the arrivals inside its steps itself
    # (sim.run_ahead.Inbox); one landing exactly on a scheduling or an application is left to
    # SimPy's event order.  Arrivals are put on step ends of the step-by-step run one at a time
    # (an arrival changes nothing before it, so the step end it was put on stays one)
    import sim.runner as runner
    sc = _write_scenario(tmp_path, "ties", engine, "arrival: {process: poisson, rate: 8}\n  lengths: {input: "
                         "{dist: uniform, low: 50, high: 800}, output: {dist: uniform, low: 5, high: 60}}", 2, 30)
    base = runner.run_scenario(sc).workload
    times = list(base.arrival_s)
    rng = np.random.default_rng(0)
    def table_of(times):
        n = len(times)
        return RequestTable(np.array(times), np.resize(base.prompt_tokens, n), np.resize(base.output_tokens, n))
    for _ in range(8):                                 # one more request on a step end past the last arrival
        st = _every_step_run(sc, table_of(times)).steps
        ends = (st["start_s"] + st["duration_s"]).to_numpy()
        later = np.sort(ends[ends > times[-1]])
        times.append(float(later[int(rng.integers(0, min(len(later), 40)))]))
    table = table_of(times)
    fast, slow = runner.run_scenario(sc, table=table), _every_step_run(sc, table)
    st = slow.steps
    ends = set((st["start_s"] + st["duration_s"]).tolist())
    assert sum(t in ends for t in times[-8:]) == 8     # the ties are there
    _same_runs(fast, slow)
