"""Capacity planning: the highest load each candidate sustains within the SLOs, and what it costs.

For each candidate configuration (a grid over `plan.candidates`, axes as in sweeps) the planner
searches the request rate: double or halve from a start until the SLO check flips, then bisect
geometrically to `rel_tol`.  A load *passes* when, for every seed, the `slo.percentile` TTFT, TPOT,
ITL and E2EL are within their targets, the share of requests meeting every SLO reaches
`plan.goodput`, every measured request finished, and the queue is stable (queueing delay grows by
at most `max_queue_growth` seconds per second of run).  This assumes pass/fail is monotone in load.

Replicas of the candidate needed for the target: ``ceil(target * margin / capacity)`` where the
capacity is the sustainable rate, lowered to the last load before a preemption cliff if one shows
up earlier.  Hourly cost = replicas * the candidate's price; cost per million output tokens is at
the target load.  The cheapest passing candidate is recommended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.errors import ScenarioError
from sim.sweep import Axis, parse_axes

PERCENTILE_KEYS = {50.0: "p50", 90.0: "p90", 95.0: "p95", 99.0: "p99"}
CLIFF_PROBES = (0.5, 0.8, 1.1, 1.3)   # extra loads tried, as multiples of the sustainable load
LATENCIES = (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"), ("e2el_ms", "E2EL"))


@dataclass(frozen=True, slots=True)
class PlanSpec:
    """The `plan:` section plus the scenario's `slo:` targets, validated."""

    target_rate: float                          # requests/s the whole deployment must carry
    slo_ms: dict[str, float]                    # e.g. {"ttft_ms": 500, "tpot_ms": 50}
    percentile: str = "p99"                     # summary key prefix the SLOs apply to
    goodput: float = 0.0                        # min fraction of requests meeting every SLO
    margin: float = 1.2                         # headroom factor: run replicas at capacity / margin
    max_queue_growth: float = 0.05              # s of extra queueing per s of run still called stable
    low_rps: float = 0.25                       # search bounds (requests/s per candidate)
    high_rps: float = 512.0
    start_rps: float = 4.0
    rel_tol: float = 0.05                       # stop bisecting when hi / lo <= 1 + rel_tol
    cliff_probes: tuple[float, ...] = CLIFF_PROBES
    cliff_min_preemptions: float = 0.02         # preemptions per request that count as a cascade
    candidates: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)


def _num(plan: Mapping[str, Any], key: str, default: float, file: str, lo: float = 0.0,
         hi: float = math.inf) -> float:
    v = plan.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise ScenarioError(file, f"plan.{key}", f"expected a number in [{lo:g}, {hi:g}]", v, True)
    return float(v)


def parse_plan(raw: Mapping[str, Any], file: str, target_rate: float | None = None) -> PlanSpec:
    """Validate `plan:` and `slo:` from a scenario mapping; one-line errors naming file and key."""
    plan = raw.get("plan") or {}
    if not isinstance(plan, Mapping):
        raise ScenarioError(file, "plan", "expected a mapping", plan, True)
    known = {"target_rate", "goodput", "margin", "max_queue_growth", "search", "cliff_probes",
             "cliff_min_preemptions", "candidates", "seeds"}
    for key in plan:
        if key not in known:
            raise ScenarioError(file, f"plan.{key}", f"unknown key; expected one of {', '.join(sorted(known))}")
    target = target_rate if target_rate is not None else plan.get("target_rate")
    if target is None:
        raise ScenarioError(file, "plan.target_rate", "required: the requests/s to serve (or pass --target-rate)")
    target = _num({"target_rate": target}, "target_rate", 0, file, 1e-9)
    slo = raw.get("slo") or {}
    slo_ms = {k: float(slo[k]) for k, _ in LATENCIES if isinstance(slo, Mapping) and slo.get(k) is not None}
    pct = float(slo.get("percentile", 99.0)) if isinstance(slo, Mapping) else 99.0
    if pct not in PERCENTILE_KEYS:
        raise ScenarioError(file, "slo.percentile", "the planner checks p50, p90, p95 or p99", pct, True)
    goodput = _num(plan, "goodput", 0.0, file, 0.0, 1.0)
    if not slo_ms and goodput == 0:
        raise ScenarioError(file, "slo", "the planner needs at least one latency target (ttft_ms, tpot_ms, itl_ms, e2el_ms)")
    search = plan.get("search") or {}
    if not isinstance(search, Mapping):
        raise ScenarioError(file, "plan.search", "expected a mapping with low, high, start, rel_tol", search, True)
    rate = (raw.get("workload") or {}).get("arrival", {}).get("rate")
    start_default = float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else 4.0
    low = _num(search, "low", 0.25, file, 1e-9)
    high = _num(search, "high", max(512.0, 2 * start_default), file, low)
    probes = plan.get("cliff_probes", CLIFF_PROBES)
    if not isinstance(probes, list | tuple) or not all(isinstance(p, int | float) and p > 0 for p in probes):
        raise ScenarioError(file, "plan.cliff_probes", "expected a list of positive load multiples", probes, True)
    base_seed = int((raw.get("run") or {}).get("seed", 0) or 0)
    seeds_raw = plan.get("seeds", 1)
    seed_axis = parse_axes({"seeds": seeds_raw}, file, {"run": {"seed": base_seed}}, where="plan")
    candidates = parse_axes(plan.get("candidates") or {}, file, raw, where="plan.candidates")
    for axis in candidates:
        if axis.name in ("rate", "seed"):
            raise ScenarioError(file, f"plan.candidates.{axis.name}",
                                "the planner searches the rate and sets seeds itself (plan.seeds); remove this axis")
    return PlanSpec(
        target_rate=target, slo_ms=slo_ms, percentile=PERCENTILE_KEYS[pct], goodput=goodput,
        margin=_num(plan, "margin", 1.2, file, 1.0), max_queue_growth=_num(plan, "max_queue_growth", 0.05, file),
        low_rps=low, high_rps=high, start_rps=min(max(_num(search, "start", start_default, file, 1e-9), low), high),
        rel_tol=_num(search, "rel_tol", 0.05, file, 1e-6), cliff_probes=tuple(float(p) for p in probes),
        cliff_min_preemptions=_num(plan, "cliff_min_preemptions", 0.02, file),
        candidates=tuple(candidates),
        seeds=tuple(int(s) for s in seed_axis[0].values))


def check_slo(m: Mapping[str, Any], spec: PlanSpec) -> list[str]:
    """Why a run misses the SLOs (empty: it meets them).  `m` is a run summary."""
    why = []
    for key, label in LATENCIES:
        if key in spec.slo_ms:
            v = m.get(f"{spec.percentile}_{key}")
            if v is None or not v <= spec.slo_ms[key]:
                why.append(f"{spec.percentile} {label} {v if v is None else round(v, 1)} ms > {spec.slo_ms[key]:g} ms")
    att = m.get("slo_attainment")
    if spec.goodput > 0 and (att is None or att < spec.goodput):
        why.append(f"goodput {att if att is None else round(att, 4)} < {spec.goodput:g}")
    if m.get("completed_frac", 1.0) < 0.999:
        why.append(f"{1 - m['completed_frac']:.1%} of requests unfinished")
    if m.get("queue_growth_s_per_s", 0.0) > spec.max_queue_growth:
        why.append(f"queue grows {m['queue_growth_s_per_s']:.3f} s/s")
    return why


@dataclass
class Probe:
    """One load tried for a candidate: the rate, whether it passed, why not, and mean metrics."""

    rate_rps: float
    ok: bool
    reasons: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    """The highest passing rate found (0 when even `low` fails), whether the search hit `high`."""

    sustainable_rps: float
    capped: bool
    probes: list[Probe]


def find_sustainable(evaluate: Callable[[float], Probe], spec: PlanSpec) -> SearchResult:
    """Bracket by doubling/halving from `start`, then bisect geometrically until hi/lo <= 1 + rel_tol."""
    probes: list[Probe] = []

    def probe(r: float) -> bool:
        p = evaluate(r)
        probes.append(p)
        return p.ok

    r = spec.start_rps
    if probe(r):
        lo, hi = r, math.nan
        while math.isnan(hi):
            if lo >= spec.high_rps:
                return SearchResult(lo, True, probes)
            nxt = min(lo * 2, spec.high_rps)
            lo, hi = (nxt, math.nan) if probe(nxt) else (lo, nxt)
    else:
        lo, hi = math.nan, r
        while math.isnan(lo):
            if hi <= spec.low_rps:
                return SearchResult(0.0, False, probes)
            nxt = max(hi / 2, spec.low_rps)
            lo, hi = (nxt, hi) if probe(nxt) else (math.nan, nxt)
    while hi / lo > 1 + spec.rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if probe(mid) else (lo, mid)
    return SearchResult(lo, False, probes)


def find_cliff(probes: Sequence[Probe], min_preemptions: float, latency_key: str = "p99_e2el_ms") -> tuple[float, float] | None:
    """The preemption cascade: the first load where preemptions per request pass `min_preemptions`
    while both they and the latency rise from the previous load.  Returns (last safe load, cliff load)."""
    pts = sorted(probes, key=lambda p: p.rate_rps)
    for a, b in zip(pts, pts[1:], strict=False):
        pa, pb = preemptions_per_request(a.metrics), preemptions_per_request(b.metrics)
        la, lb = a.metrics.get(latency_key) or 0.0, b.metrics.get(latency_key) or 0.0
        if pb >= min_preemptions and pb > pa and lb > la:
            return a.rate_rps, b.rate_rps
    return None


def preemptions_per_request(m: Mapping[str, Any]) -> float:
    done = m.get("completed") or 0
    return float(m.get("num_preemptions") or 0) / done if done else 0.0


def replicas_needed(target_rps: float, capacity_rps: float, margin: float) -> int | None:
    """Copies of a deployment to carry `target_rps` with each at most at capacity / margin."""
    if capacity_rps <= 0:
        return None
    return max(1, math.ceil(target_rps * margin / capacity_rps - 1e-9))


def rank(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible candidates first, cheapest per hour, then cheapest per token, then most headroom."""
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        feasible = r.get("replicas") is not None
        return (not feasible, r.get("hourly_cost_usd") or math.inf,
                r.get("usd_per_million_output_tokens") or math.inf, -(r.get("capacity_rps") or 0.0))
    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked):
        r["rank"] = i + 1
    return ranked


def sensitivity(rows: Sequence[dict[str, Any]], best: dict[str, Any], axes: Sequence[Axis]) -> list[dict[str, Any]]:
    """Moving each axis one step from the recommended point: change in capacity and cost."""
    out = []
    for axis in axes:
        if len(axis.values) < 2:
            continue
        i = axis.values.index(best[axis.name])
        for j in (i - 1, i + 1):
            if not 0 <= j < len(axis.values):
                continue
            want = {a.name: best[a.name] for a in axes} | {axis.name: axis.values[j]}
            other = next((r for r in rows if all(r.get(k) == v for k, v in want.items())), None)
            if other is None:
                continue
            cap0, cap1 = best.get("capacity_rps") or 0.0, other.get("capacity_rps") or 0.0
            out.append({
                "axis": axis.name, "from": best[axis.name], "to": axis.values[j],
                "capacity_rps": cap1, "delta_capacity_rps": cap1 - cap0,
                "delta_capacity_pct": (cap1 - cap0) / cap0 * 100 if cap0 else math.nan,
                "hourly_cost_usd": other.get("hourly_cost_usd"),
                "delta_hourly_cost_usd": (other.get("hourly_cost_usd") or math.nan) - (best.get("hourly_cost_usd") or math.nan),
            })
    return sorted(out, key=lambda r: -abs(r["delta_capacity_pct"]) if math.isfinite(r["delta_capacity_pct"]) else 0)
