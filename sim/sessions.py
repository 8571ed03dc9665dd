"""Multi-turn sessions: conversations whose every turn resends the whole growing context.

A chat front-end (OpenAI-style messages through a chat template) sends, at turn j, the system
prompt, every earlier user message *and* every earlier assistant answer, then the new user message.
Turn j's prompt is therefore

    S + sum_{i<j} (m_i + a_i) + m_j   tokens        (S system prompt, m_i user messages, a_i answers)

and it is described by segments (`sim.requests_table`) so the prefix cache can reuse exactly the
earlier turns' tokens: ``(system, S), (user_0, m_0), (answer_0, a_0), ..., (user_j, m_j), (answer_j,
a_j)``.  The last run lies past the prompt: it names the tokens the turn will *generate*, so that
the blocks holding them get content hashes (vLLM hashes output tokens into full blocks as well,
vllm/v1/request.py `block_hasher` on `append_output_token_ids`, and caches them in
`kv_cache_manager.allocate_slots` -> `cache_blocks`) and the next turn, which resends the answer
as prompt text, can hit them.  We assume the answer re-tokenises to the same ids (true for the
usual chat templates except around the end-of-turn tokens; a real hit can be one block shorter).

Turn j+1 is sent ``think_s`` after turn j *completes* (a closed loop per user; the engine decides
the send time, see `sim.engine`).  Sessions start either as a Poisson stream (``rate`` new
sessions/s, each session its own user) or as ``num_users`` concurrent users who each run one
session after another, a think time apart.  A session trace (``trace``) gives the turns instead of
the distributions (schema in `sim.traces.read_session_trace`).

Rows of the table are in the order they will roughly be sent, each user's in turn order; a row
whose ``arrival_s`` is NaN is a follow-up, sent ``think_s`` after the user's previous row finishes
(`sim.session_table`: the order, the follow-up links, sessions ended early).  Extra columns:
``session``, ``turn`` (0-based), ``user``, ``think_s``.

max_model_len: a chat front-end cannot send a context longer than the model takes; like ChatGPT-
style UIs ("this conversation is too long, start a new chat") the session *ends* at the first turn
whose prompt + answer would not fit, and later turns are dropped (`sim.session_table.end_long_sessions`,
counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from sim.lengths import LengthConfig, sample_lengths
from sim.requests_table import RequestTable, Segments, take
from sim.schema import Ctx, positive
from sim.session_table import send_order

SYSTEM_PROMPT_ID = 1 << 41          # = the workload's shared prefix 0 (sim.workload.SHARED_PREFIX_ID_BASE)
SESSION_ID_BASE = 1 << 42           # segment ids of session s, turn j: base + (s << 20) + 2 j (+1: answer)
MAX_TURNS = 1 << 19


@dataclass(frozen=True, slots=True)
class TurnsConfig:
    """Turns per session: ``fixed`` (value), ``uniform`` (low..high, both included) or ``geometric``
    (mean >= 1: P(k turns) = p (1-p)^(k-1), p = 1/mean, the law of a user leaving after each turn
    with probability p)."""

    dist: Literal["fixed", "uniform", "geometric"] = "fixed"
    value: int | None = None
    low: int | None = None
    high: int | None = None
    mean: float | None = None

    def validate(self, ctx: Ctx) -> None:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "geometric": ("mean",)}[self.dist]
        for key in ("value", "low", "high", "mean"):
            v = getattr(self, key)
            if key in need and v is None:
                raise ctx.at(key).error(f"required by dist '{self.dist}'")
            if key not in need and v is not None:
                raise ctx.at(key).error(f"not used by dist '{self.dist}'", v)
        if self.dist == "fixed" and not 1 <= self.value < MAX_TURNS:  # type: ignore[operator]
            raise ctx.at("value").error(f"expected 1 <= turns < {MAX_TURNS}", self.value)
        if self.dist == "uniform" and not 1 <= self.low <= self.high < MAX_TURNS:  # type: ignore[operator]
            raise ctx.error(f"expected 1 <= low <= high < {MAX_TURNS}", [self.low, self.high])
        if self.dist == "geometric" and not self.mean >= 1:  # type: ignore[operator]
            raise ctx.at("mean").error("expected a mean number of turns >= 1", self.mean)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "fixed":
            return np.full(count, self.value, dtype=np.int64)
        if self.dist == "uniform":
            return rng.integers(self.low, self.high + 1, size=count).astype(np.int64)  # type: ignore[operator, arg-type]
        return np.minimum(rng.geometric(1.0 / self.mean, size=count), MAX_TURNS - 1).astype(np.int64)  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class ThinkTimeConfig:
    """Seconds between a turn's last token and the next turn's send: ``fixed`` (value) or
    ``exponential`` (mean)."""

    dist: Literal["fixed", "exponential"] = "exponential"
    value: float | None = None
    mean: float | None = None

    def validate(self, ctx: Ctx) -> None:
        key = "value" if self.dist == "fixed" else "mean"
        other = "mean" if key == "value" else "value"
        if getattr(self, other) is not None:
            raise ctx.at(other).error(f"not used by dist '{self.dist}'", getattr(self, other))
        v = getattr(self, key)
        if v is None:
            raise ctx.at(key).error(f"required by dist '{self.dist}'")
        if not (v >= 0 and math.isfinite(v)):
            raise ctx.at(key).error("expected a finite number of seconds >= 0", v)

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        if self.dist == "fixed":
            return np.full(count, float(self.value))  # type: ignore[arg-type]
        return rng.exponential(self.mean, size=count) if self.mean else np.zeros(count)


@dataclass(frozen=True, slots=True)
class SessionsConfig:
    """``workload.sessions``: multi-turn conversations (see the module docstring).  Lengths: the
    first user message is ``workload.lengths.input``, later ones ``user_message`` (default: the
    same), answers ``workload.lengths.output``."""

    num_users: int | None = None        # closed loop: this many users, each running sessions back to back
    rate: float | None = None           # open loop: new sessions per second (Poisson)
    num_sessions: int | None = None     # default: enough sessions for run.num_requests turns
    turns: int | TurnsConfig = 1
    think_time_s: float | ThinkTimeConfig = 0.0
    user_message: LengthConfig | None = None
    system_prompt_tokens: int = 0       # one system prompt shared by every session (one cacheable run)
    trace: str | None = None            # a session trace (CSV or JSONL, sim.traces.read_session_trace)

    @property
    def enabled(self) -> bool:
        return self.num_users is not None or self.rate is not None or self.trace is not None

    @property
    def turns_dist(self) -> TurnsConfig:
        return self.turns if isinstance(self.turns, TurnsConfig) else TurnsConfig("fixed", value=self.turns)

    @property
    def think_dist(self) -> ThinkTimeConfig:
        t = self.think_time_s
        return t if isinstance(t, ThinkTimeConfig) else ThinkTimeConfig("fixed", value=t)

    def validate(self, ctx: Ctx) -> None:
        if self.num_users is not None and self.rate is not None:
            raise ctx.at("rate").error("give num_users (closed loop) or rate (new sessions/s), not both", self.rate)
        if self.num_users is not None:
            positive(ctx, "num_users", self.num_users)
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise ctx.at("rate").error("expected a finite number of new sessions/s > 0", self.rate)
        if self.num_sessions is not None:
            positive(ctx, "num_sessions", self.num_sessions)
        if not self.enabled and self != SessionsConfig():
            raise ctx.error("set num_users, rate or trace to start sessions")
        if isinstance(self.turns, int):
            TurnsConfig("fixed", value=self.turns).validate(ctx.at("turns"))
        if isinstance(self.think_time_s, float):
            ThinkTimeConfig("fixed", value=self.think_time_s).validate(ctx.at("think_time_s"))
        positive(ctx, "system_prompt_tokens", self.system_prompt_tokens, allow_zero=True)


@dataclass(frozen=True, slots=True)
class Conversations:
    """Sessions before they become rows: per turn (flat, session by session) the new user tokens,
    the answer tokens and the think time before it; per session its user and start time (NaN:
    it follows the user's previous session)."""

    turns: np.ndarray        # int64 per session
    user_tokens: np.ndarray  # int64 per turn (turn 0: the first message)
    answer_tokens: np.ndarray
    think_s: np.ndarray      # float64 per turn: think time before it (turn 0 of a chained session: before it starts)
    user: np.ndarray         # int64 per session
    start_s: np.ndarray      # float64 per session (NaN: after the user's previous session)


def generate_sessions(cfg: SessionsConfig, first: LengthConfig, later: LengthConfig, answer: LengthConfig,
                      *, num_requests: int | None, duration_s: float | None, rng: np.random.Generator,
                      ctx: Ctx) -> RequestTable:
    """The sessions of one run as a table.  Draw order (fixed, for bit-exact reruns): turns per
    session, starts, first messages, later messages, answers, think times."""
    if cfg.trace is not None:
        from sim.traces import read_session_trace, resolve_path
        conv = read_session_trace(resolve_path(cfg.trace, ctx), ctx=ctx.at("trace"))
        conv = _bounded_trace(conv, cfg, num_requests, rng, ctx)
        return build_table(conv, cfg.system_prompt_tokens, source=f"session trace {cfg.trace}")
    turns = _turn_counts(cfg, num_requests, duration_s, rng, ctx)
    s = turns.size
    if cfg.rate is not None:
        starts = _poisson_starts(cfg.rate, s, rng)
        user = np.arange(s, dtype=np.int64)
    else:
        assert cfg.num_users is not None
        user = np.arange(s, dtype=np.int64) % cfg.num_users
        starts = np.full(s, np.nan)
    t = int(turns.sum())
    head = np.zeros(t, dtype=bool)
    head[np.concatenate(([0], np.cumsum(turns)[:-1]))] = True
    msgs = np.empty(t, dtype=np.int64)
    msgs[head] = sample_lengths(first, s, rng, ctx.at("lengths").at("input"), "input")
    msgs[~head] = sample_lengths(later, t - s, rng, ctx.at("sessions").at("user_message"), "input")
    answers = sample_lengths(answer, t, rng, ctx.at("lengths").at("output"), "output")
    think = cfg.think_dist.sample(t, rng)
    if cfg.num_users is not None:       # each user's first session starts after one think time (staggered)
        firsts = np.flatnonzero(user == np.arange(s))
        starts[firsts] = think[head][firsts]
    rate_label = f"{cfg.rate:g} sessions/s" if cfg.rate is not None else f"{cfg.num_users} users"
    conv = Conversations(turns, msgs, answers, think, user, starts)
    return build_table(conv, cfg.system_prompt_tokens, source=f"sessions: {rate_label}, {_turns_label(cfg)}")


def build_table(conv: Conversations, system_tokens: int, source: str) -> RequestTable:
    """The rows, laid out user by user (users in order of their first start), each user's sessions
    in order, turns in order, then put in send order (`sim.session_table.send_order`).  The
    segment tuples are made in send order (a turn's from its previous turn's, made before it: the
    send order keeps each user's turns in order), so that the objects the engine reads as it
    sends a turn lie beside those of the turns sent around it, not a user's length of table away."""
    i64 = np.int64
    turns = conv.turns.astype(i64)
    users = conv.user.astype(i64)
    starts = conv.start_s.astype(np.float64)
    s = turns.size
    uniq, first = np.unique(users, return_index=True)     # each user's first session
    first_start = starts[first][np.searchsorted(uniq, users)] if s else starts
    order = np.lexsort((np.arange(s), users, first_start))   # by the user's start, user, session
    offset = np.concatenate(([0], np.cumsum(turns)))
    lens = turns[order]
    sess = np.repeat(order, lens)                          # per row: its session, its turn
    row0 = np.cumsum(lens) - lens                          # each session's first row
    turn = np.arange(sess.size, dtype=i64) - np.repeat(row0, lens)
    k = offset[sess] + turn                                # per row: its index in the per-turn arrays
    msgs = conv.user_tokens.astype(i64)[k]
    answers = conv.answer_tokens.astype(i64)[k]
    sent = np.cumsum(msgs + answers) - (msgs + answers)    # tokens of the rows before, run-wide
    prompt = system_tokens + (sent - np.repeat(sent[row0], lens)) + msgs
    arrival = np.where(turn == 0, starts[sess], np.nan)
    # the segments: the growing conversation as tuples (Python lists in the loop, not numpy scalars)
    head: Segments = ((SYSTEM_PROMPT_ID, system_tokens),) if system_tokens else ()
    extra = {"session": sess.astype(i64), "turn": turn, "user": users[sess],
             "think_s": conv.think_s.astype(float)[k]}
    perm = send_order(arrival, extra["think_s"], extra["user"])
    ids = SESSION_ID_BASE + (sess[perm] << 20) + 2 * turn[perm]     # per row sent: its message's run id
    segments: list[Segments] = [()] * sess.size
    for r, j, base, m, a in zip(perm.tolist(), turn[perm].tolist(), ids.tolist(), msgs[perm].tolist(),
                                answers[perm].tolist(), strict=True):
        # row r - 1 is the turn before r when r's turn is not the first
        segments[r] = (*(segments[r - 1] if j else head), (base, m), (base + 1, a))
    return take(RequestTable(arrival.astype(float), prompt.astype(i64), answers, segments=segments,
                             source=source, extra=extra), perm)


def _turn_counts(cfg: SessionsConfig, num_requests: int | None, duration_s: float | None,
                 rng: np.random.Generator, ctx: Ctx) -> np.ndarray:
    """Turns per session; with a request budget, sessions are drawn until it is met and the last
    session is cut so that the run has exactly `num_requests` turns."""
    dist = cfg.turns_dist
    if cfg.num_sessions is not None:
        turns = dist.sample(cfg.num_sessions, rng)
    elif num_requests is not None:
        turns = dist.sample(num_requests, rng)        # each session has >= 1 turn: enough sessions
    elif cfg.rate is not None and duration_s is not None:
        count = int(cfg.rate * duration_s + 10 * math.sqrt(cfg.rate * duration_s) + 10)
        turns = dist.sample(count, rng)
    else:
        raise ctx.at("sessions").error("set run.num_requests (turns) or sessions.num_sessions to bound the sessions")
    return turns if num_requests is None else _cap_turns(turns, num_requests)


def _cap_turns(turns: np.ndarray, num_requests: int) -> np.ndarray:
    """Whole sessions in order until `num_requests` turns, the last session cut to fit."""
    cum = np.cumsum(turns)
    k = int(np.searchsorted(cum, num_requests)) + 1
    out = turns[:k].copy()
    if out.size and cum[k - 1] > num_requests:
        out[-1] -= cum[k - 1] - num_requests
    return out


def _poisson_starts(rate: float, count: int, rng: np.random.Generator) -> np.ndarray:
    return np.cumsum(rng.exponential(1.0 / rate, size=count))


def _bounded_trace(conv: Conversations, cfg: SessionsConfig, num_requests: int | None,
                   rng: np.random.Generator, ctx: Ctx) -> Conversations:
    """Fill what the trace leaves out (start times, think times) from the config, then keep whole
    sessions in order up to `num_requests` turns (the last one cut); the run's duration bounds the
    simulation, not the trace."""
    s = conv.turns.size
    think = conv.think_s.copy()
    missing = np.isnan(think)
    if missing.any():
        think[missing] = cfg.think_dist.sample(int(missing.sum()), rng)
    starts, user = conv.start_s.copy(), conv.user.copy()
    if np.isnan(starts).any():
        if cfg.rate is not None:
            starts = _poisson_starts(cfg.rate, s, rng)
        elif cfg.num_users is not None:
            user = np.arange(s, dtype=np.int64) % cfg.num_users
            starts = np.full(s, np.nan)
            head = np.concatenate(([0], np.cumsum(conv.turns)[:-1]))
            firsts = np.flatnonzero(user == np.arange(s))
            starts[firsts] = think[head[firsts]]
        else:
            raise ctx.at("sessions").error("the trace has no timestamps: set sessions.rate or sessions.num_users")
    turns = conv.turns.copy()
    if num_requests is not None:
        turns = _cap_turns(turns, num_requests)
    keep_sessions = turns.size
    offset = np.concatenate(([0], np.cumsum(conv.turns)))
    idx = np.concatenate([np.arange(offset[i], offset[i] + turns[i]) for i in range(keep_sessions)]) \
        if keep_sessions else np.zeros(0, dtype=np.int64)
    return Conversations(turns, conv.user_tokens[idx], conv.answer_tokens[idx], think[idx],
                         user[:keep_sessions], starts[:keep_sessions])


def _turns_label(cfg: SessionsConfig) -> str:
    d = cfg.turns_dist
    if d.dist == "fixed":
        return f"{d.value} turns"
    if d.dist == "uniform":
        return f"{d.low}-{d.high} turns"
    return f"geometric turns, mean {d.mean:g}"

