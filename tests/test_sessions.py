"""Multi-turn sessions (sim.sessions, the engine's follow-up hook, per-turn summary): hand-worked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.config import load_scenario
from sim.errors import ScenarioError
from sim.lengths import LengthConfig
from sim.runner import make_workload, run_scenario
from sim.schema import Ctx, build
from sim.session_table import end_long_sessions, follow_up_rows
from sim.sessions import (
    SESSION_ID_BASE,
    SYSTEM_PROMPT_ID,
    SessionsConfig,
    ThinkTimeConfig,
    TurnsConfig,
    generate_sessions,
)

FIXTURES = Path(__file__).parent / "fixtures"


def _fixed(v: int) -> LengthConfig:
    return LengthConfig(dist="fixed", value=v)


def _scenario(tmp_path: Path, sessions: str, *, engine: str = "", lengths: str = "",
              hardware: str = "constant_step_s: 0.01", run: str = "num_requests: 12") -> Path:
    p = tmp_path / "chat.yaml"
    p.write_text(f"""
name: chat
model: llama-3-8b
hardware: {{gpu: H100-SXM, {hardware}}}
engine: {{block_size: 16, async_scheduling: false, {engine}}}
workload:
  lengths: {lengths or "{input: {dist: fixed, value: 100}, output: {dist: fixed, value: 37}}"}
  sessions: {{{sessions}}}
run: {{seed: 3, {run}}}
""")
    return p


def test_segments_of_the_third_turn_by_hand(rng: np.random.Generator) -> None:
    cfg = SessionsConfig(rate=1.0, turns=4, system_prompt_tokens=100)
    t = generate_sessions(cfg, _fixed(50), _fixed(20), _fixed(30), num_requests=4, duration_s=None, rng=rng,
                          ctx=Ctx("test", "workload"))
    assert len(t) == 4 and t.extra["turn"].tolist() == [0, 1, 2, 3] and set(t.extra["session"].tolist()) == {0}
    # turn index 2 resends: system 100 + (user 50 + answer 30) + (user 20 + answer 30) + new user 20 = 250
    assert int(t.prompt_tokens[2]) == 100 + 50 + 30 + 20 + 30 + 20 == 250
    assert int(t.output_tokens[2]) == 30
    b = SESSION_ID_BASE
    assert t.segments_of(2) == ((SYSTEM_PROMPT_ID, 100), (b, 50), (b + 1, 30), (b + 2, 20), (b + 3, 30),
                                (b + 4, 20), (b + 5, 30))          # the last run is the answer it will generate
    assert t.segments_of(3)[:-2] == t.segments_of(2)                 # turn 3 starts with all of turn 2
    assert np.isfinite(t.arrival_s[0]) and np.isnan(t.arrival_s[1:]).all()   # follow-ups: sent by the engine
    t.check()


def test_next_turn_is_sent_exactly_think_time_after_the_previous_finishes(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "num_users: 3, turns: 4, think_time_s: 2.5, user_message: {dist: fixed, value: 20}")
    r = run_scenario(load_scenario(p))
    df = r.requests
    assert r.summary["completed"] == 12 and r.summary["num_sessions"] == 3
    for _, g in df.groupby("session"):
        g = g.sort_values("turn")
        finish, send = g["finish_s"].to_numpy(), g["send_s"].to_numpy()
        assert np.array_equal(send[1:], finish[:-1] + 2.5)         # closed loop: finish_j + T, exactly


@pytest.mark.parametrize("async_", [False, True])
def test_prefix_hits_are_the_previous_context_in_full_blocks(tmp_path: Path, async_: bool) -> None:
    # block 16, first message 100, later messages 20, answers 37, no system prompt.  A turn of
    # prompt P and answer O caches floor((P + O - 1) / 16) full blocks (its last sampled token is
    # never fed back, as in vLLM); the next turn hits all of them:
    #   turn 0: P=100, hit 0;  cached floor(136/16) = 8 blocks
    #   turn 1: P=100+37+20=157, hit 8*16 = 128;  cached floor(193/16) = 12 blocks
    #   turn 2: P=157+37+20=214, hit 12*16 = 192; cached floor(250/16) = 15 blocks
    #   turn 3: P=214+57=271,    hit 15*16 = 240
    p = _scenario(tmp_path, "num_users: 3, turns: 4, think_time_s: 1.0, user_message: {dist: fixed, value: 20}")
    p.write_text(p.read_text().replace("async_scheduling: false", f"async_scheduling: {str(async_).lower()}"))
    r = run_scenario(load_scenario(p))
    df = r.requests.sort_values(["session", "turn"])
    assert df["prompt_tokens"].tolist() == [100, 157, 214, 271] * 3
    assert df["prefix_hit_tokens"].tolist() == [0, 128, 192, 240] * 3
    assert r.summary["prefix_cache_hit_rate_by_turn"] == pytest.approx([0, 128 / 157, 192 / 214, 240 / 271])
    off = run_scenario(load_scenario(p, ["engine.enable_prefix_caching=false"]))
    assert (off.requests["prefix_hit_tokens"] == 0).all()
    assert off.summary["prefix_cache_hit_rate_by_turn"] == [0.0] * 4


def test_ttft_by_turn_with_constant_steps(tmp_path: Path) -> None:
    # one user, fixed think time: every turn runs alone, so its TTFT is its prefill steps.  With
    # constant 0.01 s steps and an 8192-token budget every prompt here prefills in one step: TTFT
    # 0.01 s on every turn, prefix caching or not.
    p = _scenario(tmp_path, "num_users: 1, turns: 4, think_time_s: 5, user_message: {dist: fixed, value: 20}",
                  run="num_requests: 4")
    s = run_scenario(load_scenario(p)).summary
    assert s["ttft_ms_by_turn"]["median"] == pytest.approx([10.0] * 4)
    assert s["ttft_ms_by_turn"]["count"] == [1, 1, 1, 1]
    assert s["num_turns"] == 4 and s["num_turns_sent"] == 4


def test_ttft_grows_with_context_without_caching_and_not_with_it(tmp_path: Path) -> None:
    # the roofline cost model: without prefix caching turn j prefills its whole context, so TTFT
    # grows with the turn; with caching it prefills only ~the new user message.
    p = _scenario(tmp_path, "num_users: 1, turns: 6, think_time_s: 5, user_message: {dist: fixed, value: 20}",
                  hardware="", run="num_requests: 6",
                  lengths="{input: {dist: fixed, value: 2000}, output: {dist: fixed, value: 500}}")
    on = run_scenario(load_scenario(p)).summary["ttft_ms_by_turn"]["median"]
    off = run_scenario(load_scenario(p, ["engine.enable_prefix_caching=false"])).summary["ttft_ms_by_turn"]["median"]
    assert all(b > a for a, b in zip(off, off[1:], strict=False))           # 2000, 2520, 3040, ... tokens recomputed
    assert on[0] == pytest.approx(off[0])                         # nothing to reuse on the first turn
    assert max(on[1:]) < 0.5 * off[1]                             # a few blocks instead of the whole context


def test_one_turn_sessions_equal_an_open_loop_workload(tmp_path: Path) -> None:
    # sessions at rate r with one turn each draw their starts, prompts and answers in the same
    # order as a Poisson workload (normalize: false) draws arrivals and lengths: the same run.
    lengths = "{input: {dist: uniform, low: 50, high: 900}, output: {dist: uniform, low: 5, high: 300}}"
    sess = _scenario(tmp_path, "rate: 6, turns: 1", hardware="", lengths=lengths, run="num_requests: 300")
    plain = tmp_path / "plain.yaml"
    plain.write_text(sess.read_text().replace("sessions: {rate: 6, turns: 1}",
                                              "arrival: {process: poisson, rate: 6, normalize: false}"))
    a, b = run_scenario(load_scenario(sess)), run_scenario(load_scenario(plain))
    assert np.array_equal(a.workload.arrival_s, b.workload.arrival_s)
    assert np.array_equal(a.workload.prompt_tokens, b.workload.prompt_tokens)
    for col in ("send_s", "first_token_s", "finish_s"):
        assert np.array_equal(a.requests[col].to_numpy(), b.requests[col].to_numpy()), col
    assert a.summary["median_ttft_ms"] == b.summary["median_ttft_ms"]


@pytest.mark.parametrize("engine", ["", "num_gpu_blocks_override: 120"])
def test_sessions_equal_an_open_loop_replay_of_their_sends(tmp_path: Path, engine: str) -> None:
    # the closed loop only decides *when* each turn is sent: replaying the same turns (same
    # segments, so the same prefix hits) open-loop at the times the closed loop sent them must
    # give every turn the same first token, finish and hit, with and without evictions.  (The
    # replay has no session columns: its hash chains come from the memo by content; the closed
    # loop's are handed from each turn to the next, `sim.block_hash.request_chain`)
    from sim.requests_table import RequestTable
    lengths = "{input: {dist: uniform, low: 50, high: 400}, output: {dist: uniform, low: 5, high: 120}}"
    sess = _scenario(tmp_path, "num_users: 6, turns: {dist: uniform, low: 2, high: 5}, "
                     "think_time_s: {dist: exponential, mean: 0.3}, system_prompt_tokens: 40",
                     engine=engine, hardware="", lengths=lengths, run="num_requests: 120")
    sc = load_scenario(sess)
    a = run_scenario(sc)
    t = a.workload
    send = a.requests["send_s"].to_numpy()
    order = np.argsort(send, kind="stable")
    assert t.segments is not None and np.isnan(t.arrival_s).sum() > 60      # mostly follow-ups
    replay = RequestTable(send[order], t.prompt_tokens[order], t.output_tokens[order],
                          segments=[t.segments[i] for i in order])
    b = run_scenario(sc, table=replay)
    for col in ("send_s", "first_token_s", "finish_s", "prefix_hit_tokens", "num_preemptions"):
        assert np.array_equal(a.requests[col].to_numpy()[order], b.requests[col].to_numpy()), col
    assert a.requests["prefix_hit_tokens"].sum() > 0
    if engine:                      # the small cache forgets contexts and preempts (hit rate 0.10, not 0.64)
        assert a.summary["num_preemptions"] > 0 and a.summary["prefix_cache_hit_rate"] < 0.3


def test_same_seed_same_numbers(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "rate: 2, turns: {dist: geometric, mean: 3}, think_time_s: {dist: exponential, mean: 4}",
                  hardware="", lengths="{input: {dist: uniform, low: 50, high: 500}, output: {dist: uniform, low: 5, high: 200}}",
                  run="num_requests: 60")
    a, b = run_scenario(load_scenario(p)), run_scenario(load_scenario(p))
    assert a.summary["ttft_ms_by_turn"] == b.summary["ttft_ms_by_turn"]
    assert a.requests.equals(b.requests)
    assert len(a.workload) == 60                              # the last session is cut to the request budget
    c = run_scenario(load_scenario(p, ["run.seed=4"]))
    assert not a.requests["send_s"].equals(c.requests["send_s"])


def test_sessions_end_at_max_model_len() -> None:
    # prompts 100, 157, 214, 271 with answers 37: turn 3 needs 271 + 37 = 308 > 300 tokens, so the
    # session ends after turn 2 (a chat UI's "start a new chat"); one session ended, counted.
    cfg = SessionsConfig(num_users=1, turns=4, num_sessions=2)
    t = generate_sessions(cfg, _fixed(100), _fixed(20), _fixed(37), num_requests=None, duration_s=None,
                          rng=np.random.default_rng(0), ctx=Ctx("test", "workload"))
    kept, ended = end_long_sessions(t, 300)
    assert ended == 2 and len(kept) == 6
    assert kept.extra["turn"].tolist() == [0, 1, 2, 0, 1, 2]
    assert (kept.prompt_tokens + kept.output_tokens).max() <= 300
    kept.check()
    same, none = end_long_sessions(t, 308)
    assert none == 0 and len(same) == 8


def test_session_trace_fixture() -> None:
    # tests/fixtures/sessions_small.csv: chat-a starts at 100 s (turns 0, 1), chat-b at 105 s (0..2);
    # chat-a first: turn 1 prompt = 50 + 25 + 20 = 95; chat-b turn 2 = 40+10 + 5+15 + 7 = 77
    cfg = SessionsConfig(trace=str(FIXTURES / "sessions_small.csv"))
    t = generate_sessions(cfg, _fixed(1), _fixed(1), _fixed(1), num_requests=None, duration_s=None,
                          rng=np.random.default_rng(0), ctx=Ctx("test", "workload.sessions"))
    assert t.prompt_tokens.tolist() == [50, 95, 40, 55, 77]
    assert t.output_tokens.tolist() == [25, 30, 10, 15, 9]
    assert t.arrival_s[0] == 0.0 and t.arrival_s[2] == 5.0 and np.isnan(t.arrival_s[[1, 3, 4]]).all()
    assert t.extra["think_s"][[1, 3, 4]].tolist() == [2.0, 0.5, 1.5]


def test_session_trace_with_a_gap_in_its_turns_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("session_id,turn,input_tokens,output_tokens\nx,0,10,10\nx,2,10,10\n")
    with pytest.raises(ScenarioError, match="turns 0, 1"):
        generate_sessions(SessionsConfig(trace=str(bad), rate=1.0), _fixed(1), _fixed(1), _fixed(1),
                          num_requests=None, duration_s=None, rng=np.random.default_rng(0), ctx=Ctx("t", "w"))


@pytest.mark.parametrize("raw, key", [
    ({"num_users": 4, "turns": 0}, "turns.value"),
    ({"num_users": 4, "turns": {"dist": "geometric", "mean": 0.5}}, "turns.mean"),
    ({"num_users": 4, "turns": {"dist": "uniform", "low": 3}}, "turns.high"),
    ({"num_users": 4, "think_time_s": -1}, "think_time_s.value"),
    ({"num_users": 4, "think_time_s": {"dist": "exponential", "mean": -2}}, "think_time_s.mean"),
    ({"num_users": 4, "rate": 2}, "rate"),
    ({"num_users": 0}, "num_users"),
    ({"turns": 3}, "sessions"),
])
def test_bad_session_config_is_refused_in_one_line(raw: dict, key: str) -> None:
    with pytest.raises(ScenarioError) as e:
        build(SessionsConfig, raw, Ctx("s.yaml", "sessions"))
    msg = str(e.value)
    assert "\n" not in msg and key in msg and "s.yaml" in msg


def test_sessions_refuse_an_arrival_section(tmp_path: Path) -> None:
    p = _scenario(tmp_path, "num_users: 2")
    p.write_text(p.read_text().replace("workload:\n", "workload:\n  arrival: {process: poisson, rate: 3}\n"))
    with pytest.raises(ScenarioError, match="workload.arrival"):
        load_scenario(p)


def test_workload_has_session_columns(tmp_path: Path) -> None:
    t = make_workload(load_scenario(_scenario(tmp_path, "num_users: 2, turns: 3")))
    assert set(t.extra) >= {"session", "turn", "user", "think_s"}
    user = t.extra["user"]
    for u in (0, 1):                                              # each user's rows in turn order
        assert t.extra["turn"][user == u].tolist() == [0, 1, 2] * (int(np.sum(user == u)) // 3)
    opener = np.isfinite(t.arrival_s)
    assert opener.sum() == 2 and np.all(np.diff(t.arrival_s[opener]) >= 0)   # one timed opener per user, in time order
    t.check()
    assert follow_up_rows(t)[int(np.flatnonzero(opener)[0])] == int(np.flatnonzero(user == user[opener][0])[1])


def test_rows_come_in_estimated_send_order(tmp_path: Path) -> None:
    # think times of 1 s: both users open at 1 s (the stagger is one think time), then each
    # turn is sent an estimated 1 s after the user's previous one (answer times left out): the
    # users' turns interleave, user 0 first at each tie (the order the rows were made in)
    t = make_workload(load_scenario(_scenario(tmp_path, "num_users: 2, turns: 3, think_time_s: 1.0")))
    assert t.extra["user"].tolist() == [0, 1] * 6
    assert t.extra["turn"].tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert t.extra["session"].tolist()[:6] == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("async_, blocks, replicas, seed", [
    (False, 4000, 1, 5), (True, 4000, 1, 5), (True, 400, 1, 7), (True, 400, 2, 5),
    (False, 4000, 2, 10), (True, 4000, 3, 11), (False, 400, 2, 11)])
def test_quiet_stretches_stop_at_decided_follow_ups(async_: bool, blocks: int, replicas: int, seed: int) -> None:
    # a follow-up's send time is known once its previous turn finishes; quiet stretches must end
    # before it, so taking decode runs at once changes nothing against taking every step alone.
    # With several replicas a turn finishing on one decides a send inside another's stretch (the
    # multi-replica cases diverged until stretches were turned off for them)
    from test_quiet import run
    cfg = SessionsConfig(rate=3.0, turns=TurnsConfig("uniform", low=1, high=6),
                         think_time_s=ThinkTimeConfig("exponential", mean=0.5), system_prompt_tokens=48)
    rng = np.random.default_rng(seed)
    table = generate_sessions(cfg, LengthConfig("uniform", low=50, high=300), LengthConfig("uniform", low=5, high=60),
                              LengthConfig("uniform", low=5, high=200), num_requests=150, duration_s=None, rng=rng,
                              ctx=Ctx("test", "workload"))
    a, end_a, _ = run(table, True, async_=async_, caching=True, blocks=blocks, replicas=replicas)
    b, end_b, _ = run(table, False, async_=async_, caching=True, blocks=blocks, replicas=replicas)
    assert end_a == end_b
    for col in ("send_s", "first_token_s", "finish_s", "prefix_hit_tokens"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    assert np.isfinite(a.finish_s).all() and a.prefix_hit_tokens.sum() > 0


def test_report_section_only_with_sessions() -> None:
    from reports.charts_sessions import turns
    from reports.data import ReportData
    assert turns(ReportData(Path("."), "run", "plain", summary={"median_ttft_ms": 20.0})) is None
    s = {"num_sessions": 2, "num_turns": 5, "num_turns_sent": 5, "num_sessions_ended_at_max_model_len": 0,
         "ttft_ms_by_turn": {"median": [40.0, 25.0, 30.0], "p99": [50.0, 35.0, 45.0], "count": [2, 2, 1]},
         "prefix_cache_hit_rate_by_turn": [0.0, 0.8, 0.9]}
    sec = turns(ReportData(Path("."), "run", "chat", summary=s))
    assert sec is not None and sec.title == "Multi-turn sessions"
    reading = sec.charts[0].reading
    assert "from 40 ms on the first turn to 30 ms on turn 3" in reading and "80-90%" in reading
    assert reading.endswith(".") and "1 conversations reached turn 3" in reading


def test_warmup_counts_the_first_turns_sent(tmp_path: Path) -> None:
    # rows are in an estimated send order; the warm-up is the first N turns actually sent
    p = _scenario(tmp_path, "num_users: 3, turns: 4, think_time_s: 1.0, user_message: {dist: fixed, value: 20}",
                  run="num_requests: 12, warmup_requests: 3")
    df = run_scenario(load_scenario(p)).requests
    first3 = df.sort_values("send_s", kind="stable").index[:3]
    assert not df.loc[first3, "measured"].any() and df["measured"].sum() == 9
    assert (df.loc[first3, "turn"] == 0).all()                  # the three users' openers go first


def test_run_ends_conversations_that_outgrow_max_model_len(tmp_path: Path) -> None:
    # prompts 100, 157, 214, 271 (+37 answer): with max_model_len 300 each session keeps 3 turns
    p = _scenario(tmp_path, "num_users: 2, turns: 4, num_sessions: 2, user_message: {dist: fixed, value: 20}",
                  engine="max_model_len: 300", run="num_requests: 8")
    r = run_scenario(load_scenario(p))
    s = r.summary
    assert s["num_sessions_ended_at_max_model_len"] == 2 and s["num_turns"] == 6 and s["completed"] == 6
    assert s["ttft_ms_by_turn"]["count"] == [2, 2, 2]


def test_a_cpu_tier_serves_the_turns_the_gpu_cache_forgot(tmp_path: Path) -> None:
    # Same conversations as the hand-worked prefix test (prompts 100, 157, 214, 271; answers 37),
    # 6 users on a GPU cache of 40 blocks, so users evict each other's earlier turns.  vLLM's CPU
    # offloading stores every full *prompt* block as it is computed (offload_prompt_only), so the
    # GPU hit plus the tier's continuation of it give turn j at least the previous turn's prompt in
    # full blocks: turn 1 floor(100/16)*16 = 96, turn 2 floor(157/16)*16 = 144, turn 3
    # floor(214/16)*16 = 208; over 6 sessions at least 6 * (96 + 144 + 208) = 2688 tokens not
    # recomputed.  Without the tier, the GPU keeps far less of it.
    p = _scenario(tmp_path, "num_users: 6, turns: 4, think_time_s: 1.0, user_message: {dist: fixed, value: 20}",
                  engine="num_gpu_blocks_override: 40", run="num_requests: 24")
    no_tier = run_scenario(load_scenario(p))
    tier = run_scenario(load_scenario(p, ["engine.kv_offloading_size=1"]))
    gpu_hits = int(tier.requests["prefix_hit_tokens"].sum())      # the local prefix cache's share
    assert gpu_hits + tier.summary["kv_offload_cpu_hit_tokens"] >= 6 * (96 + 144 + 208)
    assert tier.summary["kv_offload_cpu_hit_tokens"] > 0
    assert int(no_tier.requests["prefix_hit_tokens"].sum()) < 6 * (96 + 144 + 208) / 2
