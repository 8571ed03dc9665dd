"""The workload: when requests arrive and what they ask for, as a `RequestTable`.

Arrivals follow vllm bench serve (``benchmarks/serve.py: get_request``): with ``request_rate`` r and
``burstiness`` b, the gaps between requests are i.i.d. Gamma(shape=b, scale=1/(r*b)), mean 1/r and
coefficient of variation 1/sqrt(b); b = 1 is a Poisson process, b -> inf a constant rate, r = inf
sends everything at t=0.  The first request, like vLLM's, comes after one gap, not at 0.  vLLM
then rescales the cumulative times so that the last request lands exactly at N/r ("to stabilise
throughput across seeds"); ``normalize: true`` (the default) does the same, ``false`` keeps the raw
renewal process (what queueing formulas assume).  ``max_concurrency`` is vLLM's closed-loop cap;
it is carried on the table and enforced by the engine.

Lengths come from `sim.lengths` (default: vllm's random dataset, 1024 in / 128 out) or from a trace's
rows; arrivals may come from a trace too (``process: trace``, see `sim.trace_replay`).  A shared
prefix (vllm's ``--random-prefix-len``) is *added* to each prompt and described by a segment so the
prefix cache can reuse it.  Everything random is drawn from the generator passed in, in a fixed
order (arrivals, input lengths, output lengths, prefix choice): same seed, same arrays, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np

from sim.lengths import LengthsConfig, sample_lengths
from sim.requests_table import RequestTable, Segments, take
from sim.schema import Ctx, positive
from sim.sessions import SessionsConfig, generate_sessions
from sim.trace_replay import TraceConfig, load_window, replay, select_rows

SHARED_PREFIX_ID_BASE = 1 << 41    # shared prefix k has segment id SHARED_PREFIX_ID_BASE + k


@dataclass(frozen=True, slots=True)
class ArrivalConfig:
    """``workload.arrival``: the arrival process (vllm bench serve's request_rate and burstiness)."""

    _aliases: ClassVar[dict[str, str]] = {"request_rate": "rate"}

    process: Literal["poisson", "gamma", "constant", "trace"] = "poisson"
    rate: float | str | None = None     # requests/s ("inf": all at t=0); with process: trace, rescales the trace
    burstiness: float = 1.0             # gamma only: shape; CV of the gaps = 1/sqrt(burstiness)
    max_concurrency: int | None = None  # closed loop: at most this many in flight (vllm --max-concurrency)
    normalize: bool = True              # vLLM: rescale so the last arrival is at N/rate exactly
    curve: tuple[tuple[float, float], ...] = ()   # poisson with a rate over time: [[t_s, req/s], ...], linear between

    @property
    def rate_rps(self) -> float | None:
        if self.curve:
            return max(r for _, r in self.curve)
        return float("inf") if isinstance(self.rate, str) else self.rate

    def validate(self, ctx: Ctx) -> None:
        if self.curve:
            if self.process != "poisson":
                raise ctx.at("curve").error("a rate curve drives a (non-homogeneous) poisson process; set process: poisson")
            if self.rate is not None:
                raise ctx.at("rate").error("give a rate or a curve, not both", self.rate)
            times = [t for t, _ in self.curve]
            if len(self.curve) < 2 or times[0] < 0 or any(b <= a for a, b in zip(times, times[1:], strict=False)):
                raise ctx.at("curve").error("expected at least two [time_s, rate] points with increasing times >= 0")
            if any(r < 0 for _, r in self.curve) or not any(r > 0 for _, r in self.curve):
                raise ctx.at("curve").error("expected rates >= 0, not all zero")
            return
        if isinstance(self.rate, str) and self.rate.strip().lower() not in ("inf", "infinity"):
            raise ctx.at("rate").error("expected a number of requests/s or 'inf'", self.rate)
        if self.rate_rps is not None:
            positive(ctx, "rate", self.rate_rps)
        elif self.process != "trace":
            raise ctx.at("rate").error(f"required by process '{self.process}'")
        positive(ctx, "burstiness", self.burstiness)
        if self.process != "gamma" and self.burstiness != 1.0:
            raise ctx.at("burstiness").error("only used by process 'gamma'", self.burstiness)
        if self.max_concurrency is not None:
            positive(ctx, "max_concurrency", self.max_concurrency)


@dataclass(frozen=True, slots=True)
class SharedPrefixConfig:
    """``workload.shared_prefix``: a system prompt of ``tokens`` tokens in front of every prompt,
    one of ``num_prefixes`` distinct ones, assigned round-robin or at random."""

    tokens: int = 0
    num_prefixes: int = 1
    assign: Literal["round_robin", "random"] = "round_robin"

    def validate(self, ctx: Ctx) -> None:
        positive(ctx, "tokens", self.tokens, allow_zero=True)
        positive(ctx, "num_prefixes", self.num_prefixes)


@dataclass(frozen=True, slots=True)
class SLOClass:
    """One request class of ``workload.classes``: its share of the traffic, vLLM priority (lower
    is more urgent; used by ``engine.scheduling_policy: priority``) and its own latency targets
    (missing ones fall back to the scenario's ``slo``)."""

    name: str
    share: float = 1.0
    priority: int = 0
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def validate(self, ctx: Ctx) -> None:
        if not self.name:
            raise ctx.at("name").error("expected a non-empty class name")
        positive(ctx, "share", self.share)
        for key in ("ttft_ms", "tpot_ms", "e2el_ms"):
            if getattr(self, key) is not None:
                positive(ctx, key, getattr(self, key))


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """``workload``: arrivals, lengths (or a trace), request count, parallel samples, shared prefix."""

    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    lengths: LengthsConfig = field(default_factory=LengthsConfig)   # unused when the trace gives lengths
    trace: TraceConfig = field(default_factory=TraceConfig)         # no path: no trace
    num_requests: int | None = None             # the caller's num_requests argument wins
    n: int = 1                                  # SamplingParams.n, for sources without an n column
    shared_prefix: SharedPrefixConfig = field(default_factory=SharedPrefixConfig)
    classes: tuple[SLOClass, ...] = ()          # SLO classes, drawn per request by share
    sessions: SessionsConfig = field(default_factory=SessionsConfig)   # multi-turn conversations (sim.sessions)

    def validate(self, ctx: Ctx) -> None:
        if self.sessions.enabled:
            for key, default in (("arrival", ArrivalConfig()), ("trace", TraceConfig()),
                                 ("shared_prefix", SharedPrefixConfig())):
                if getattr(self, key) != default:
                    raise ctx.at(key).error("not used with sessions (they decide their own sends and prompts; "
                                            "use sessions.rate / num_users / system_prompt_tokens / trace)")
            if self.n != 1:
                raise ctx.at("n").error("parallel sampling is not simulated with sessions", self.n)
        names = [c.name for c in self.classes]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ctx.at(f"classes[{i}].name").error("duplicate class name", name)
        process = self.arrival.process
        if process == "trace" and not self.trace.enabled:
            raise ctx.at("trace.path").error("required by arrival.process: trace")
        if self.trace.enabled:
            if self.trace.use_lengths and self.lengths != LengthsConfig():
                raise ctx.at("lengths").error("the trace gives the lengths; remove this or set trace.use_lengths: false")
            if process != "trace" and not self.trace.use_lengths:
                raise ctx.at("trace").error("unused: set arrival.process: trace or trace.use_lengths: true")
            if process == "trace" and self.arrival.rate is not None and self.trace.time_scale != 1.0:
                raise ctx.at("trace.time_scale").error("give arrival.rate or trace.time_scale, not both")
        if self.num_requests is not None:
            positive(ctx, "num_requests", self.num_requests)
        positive(ctx, "n", self.n)


def generate(cfg: WorkloadConfig, *, num_requests: int | None, duration_s: float | None,
             rng: np.random.Generator, ctx: Ctx) -> RequestTable:
    """The workload for one run.  ``num_requests`` (else ``cfg.num_requests``) and/or ``duration_s``
    bound it: with both, at most ``num_requests`` requests arriving by ``duration_s``.  ``ctx`` is the
    workload section's context (for errors)."""
    count = num_requests if num_requests is not None else cfg.num_requests
    if cfg.sessions.enabled:
        sess = cfg.sessions
        table = generate_sessions(sess, cfg.lengths.input, sess.user_message or cfg.lengths.input,
                                  cfg.lengths.output, num_requests=count, duration_s=duration_s, rng=rng, ctx=ctx)
        if cfg.classes:
            table = with_classes(table, cfg.classes, rng)
        table.check()
        return table
    if cfg.arrival.process == "trace":
        table = replay(cfg.trace, rate=cfg.arrival.rate_rps, num_requests=count, duration_s=duration_s,
                       rng=rng, ctx=ctx.at("trace"))
        if not cfg.trace.use_lengths:
            table = _with_lengths(table, cfg.lengths, rng, ctx)
    else:
        arrival = arrival_times(cfg.arrival, count, duration_s, rng, ctx.at("arrival"))
        if cfg.trace.enabled:
            window = load_window(cfg.trace, ctx.at("trace"))
            rows = take(window, select_rows(window, cfg.trace, arrival.size, rng, ctx.at("trace")))
            table = replace(rows, arrival_s=arrival, source=f"{rows.source} rows, {_label(cfg.arrival)}")
        else:
            empty = np.zeros(arrival.size, dtype=np.int64)
            table = _with_lengths(RequestTable(arrival, empty, empty, source=_label(cfg.arrival)),
                                  cfg.lengths, rng, ctx)
    if table.n is None and cfg.n != 1:
        table = replace(table, n=np.full(len(table), cfg.n, dtype=np.int64))
    table = _with_shared_prefix(table, cfg.shared_prefix, rng)
    table = replace(table, max_concurrency=cfg.arrival.max_concurrency)
    if cfg.classes:
        table = with_classes(table, cfg.classes, rng)
    table.check()
    return table


def with_classes(table: RequestTable, classes: tuple[SLOClass, ...], rng: np.random.Generator) -> RequestTable:
    """Give each request an SLO class (drawn by share, after every other draw) and its priority."""
    share = np.asarray([c.share for c in classes], dtype=float)
    cls = rng.choice(len(classes), size=len(table), p=share / share.sum()).astype(np.int64)
    prio = np.asarray([c.priority for c in classes], dtype=np.int64)[cls]
    return replace(table, extra={**table.extra, "slo_class": cls, "priority": prio})


def arrival_times(cfg: ArrivalConfig, count: int | None, duration_s: float | None,
                  rng: np.random.Generator, ctx: Ctx) -> np.ndarray:
    """Synthetic arrival times in seconds (sorted), as vllm bench serve's get_request computes them."""
    if cfg.curve:
        return curve_arrivals(cfg.curve, count, duration_s, rng)
    rate = cfg.rate_rps
    assert rate is not None
    if count is None and duration_s is None:
        raise ctx.error("set num_requests or a run duration to bound the workload")
    if math.isinf(rate):
        if count is None:
            raise ctx.at("rate").error("rate 'inf' sends everything at t=0: set num_requests", cfg.rate)
        return np.zeros(count)
    if count is None:
        assert duration_s is not None
        if cfg.normalize:   # vLLM's fixed count: exactly rate * duration requests, the last at count/rate
            count = max(1, math.floor(rate * duration_s + 1e-9))
        else:               # a true renewal process on [0, duration_s]: draw until past the end
            times = np.zeros(0)
            while times.size == 0 or times[-1] <= duration_s:
                chunk = int(rate * duration_s + 10 * math.sqrt(rate * duration_s) + 100)
                start = times[-1] if times.size else 0.0
                times = np.concatenate((times, start + np.cumsum(_gaps(cfg, chunk, rate, rng))))
            return times[times <= duration_s]
    times = np.cumsum(_gaps(cfg, count, rate, rng))
    if cfg.normalize and times.size and times[-1] > 0:
        times = times * ((count / rate) / times[-1])
    if duration_s is not None:
        times = times[times <= duration_s]
    return times


def curve_arrivals(curve: tuple[tuple[float, float], ...], count: int | None, duration_s: float | None,
                   rng: np.random.Generator) -> np.ndarray:
    """A Poisson process whose rate follows `curve` (piecewise linear; 0 outside it), by time
    rescaling: unit-rate arrivals mapped through the inverse of the cumulative rate
    Lambda(t) = integral of rate, which is exact between the curve's points (quadratic there)."""
    t = np.asarray([p[0] for p in curve], dtype=float)
    r = np.asarray([p[1] for p in curve], dtype=float)
    end = t[-1] if duration_s is None else min(t[-1], duration_s)
    cum = np.concatenate(([0.0], np.cumsum((r[1:] + r[:-1]) / 2 * np.diff(t))))
    total = float(np.interp(end, t, cum)) if end < t[-1] else float(cum[-1])
    target = np.cumsum(rng.exponential(1.0, size=max(int(total + 10 * math.sqrt(total) + 100), 1)))
    target = target[target <= total]
    if count is not None:
        target = target[:count]
    # invert Lambda on each segment: Lambda(t_i + u) = cum_i + r_i u + (r_{i+1} - r_i) u^2 / (2 dt_i)
    i = np.clip(np.searchsorted(cum, target, side="right") - 1, 0, len(t) - 2)
    dt = t[i + 1] - t[i]
    a = (r[i + 1] - r[i]) / (2 * dt)
    b = r[i]
    c = cum[i] - target
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
        u = np.where(np.abs(a) > 1e-12, (-b + disc) / (2 * a), -c / np.where(b > 0, b, 1.0))
    return t[i] + np.clip(u, 0.0, dt)


def _gaps(cfg: ArrivalConfig, count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    if cfg.process == "constant":
        return np.full(count, 1.0 / rate)
    if cfg.process == "poisson":
        return rng.exponential(1.0 / rate, size=count)
    return rng.gamma(cfg.burstiness, 1.0 / (rate * cfg.burstiness), size=count)


def _label(cfg: ArrivalConfig) -> str:
    if cfg.curve:
        return f"poisson, rate curve {min(r for _, r in cfg.curve):g}-{cfg.rate_rps:g} req/s over {cfg.curve[-1][0]:g} s"
    shape = f", burstiness {cfg.burstiness:g}" if cfg.process == "gamma" else ""
    return f"{cfg.process} {cfg.rate_rps:g} req/s{shape}"


def _with_lengths(table: RequestTable, lengths: LengthsConfig, rng: np.random.Generator, ctx: Ctx) -> RequestTable:
    """Replace the token counts by draws from ``lengths``; trace segments and n no longer apply."""
    m = len(table)
    prompt = sample_lengths(lengths.input, m, rng, ctx.at("lengths").at("input"), "input")
    output = sample_lengths(lengths.output, m, rng, ctx.at("lengths").at("output"), "output")
    return replace(table, prompt_tokens=prompt, output_tokens=output, n=None, segments=None)


def _with_shared_prefix(table: RequestTable, cfg: SharedPrefixConfig, rng: np.random.Generator) -> RequestTable:
    """Put a shared system prompt in front of every prompt (longer prompts, one leading segment)."""
    if cfg.tokens == 0:
        return table
    m = len(table)
    if cfg.assign == "random":
        which = rng.integers(0, cfg.num_prefixes, size=m)
    else:
        which = np.arange(m) % cfg.num_prefixes
    heads: list[Segments] = [((SHARED_PREFIX_ID_BASE + int(k), cfg.tokens),) for k in which]
    segments = heads if table.segments is None else [h + s for h, s in zip(heads, table.segments, strict=True)]
    return replace(table, prompt_tokens=table.prompt_tokens + cfg.tokens, segments=segments)
