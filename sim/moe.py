"""Mixture-of-experts arithmetic: how many experts a step reads, and how long its expert GEMMs take.

Each of the T tokens of a step picks k of the E routed experts of every MoE layer.  Assume each
expert is equally likely (k/E) to be among one token's choices and tokens choose independently
(uniform routing; real routers are skewed, which makes fewer experts distinct, so this is the
pessimistic side for small batches).  Then for one expert

    P(no token of the step picks it) = (1 - k/E)^T

and by linearity of expectation the expected number of distinct experts the step touches is

    D(T) = E · (1 - (1 - k/E)^T)

D(1) = k (one token reads its k experts), D(T) ≈ k·T while k·T << E (few tokens, nearly no
overlap), and D(T) -> E as T grows (a large batch reads every expert).  DeepSeek's group-limited
routing (n_group, topk_group) leaves every expert's marginal probability at k/E, so D(T) holds.

An MoE layer's expert GEMMs on one GPU then take (roofline, one grouped GEMM per layer)

    max(T·k·flops_per_expert_token / (peak·eff), D(T)·bytes_per_expert / (HBM·eff))

i.e. T·k/D(T) tokens per touched expert: a batch of a few tokens is bound by reading D(T)
experts' weights, a large one by the FLOPs of T·k expert-token pairs.

Expert parallelism (vLLM `enable_expert_parallel`, TP×EP with one data-parallel rank): each GPU
owns E/ep whole experts instead of a 1/tp slice of every expert; the same T tokens reach every
rank and the MoE output is all-reduced as with TP (vllm/model_executor/layers/fused_moe/config.py
`FusedMoEParallelConfig.make`; `ParallelConfig.use_all2all` is false with data_parallel_size 1).
The step waits for the busiest rank: its expected distinct experts and expert-token pairs are
taken as mean + c_ep·sd of the per-rank counts (normal approximation; c_ep = expected maximum of
ep standard normals, 1.42 for 8), capped at what the rank can hold.
"""

from __future__ import annotations

import math


def expected_distinct_experts(tokens: float, num_experts: int, top_k: int) -> float:
    """E·(1-(1-k/E)^T): expected experts of one layer that at least one of T tokens routes to."""
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


def expected_max_std_normal(n: int) -> float:
    """E[max of n independent standard normals] (0 for n = 1), by numerical integration."""
    if n <= 1:
        return 0.0
    steps, lo, hi = 4000, -8.0, 8.0
    dx = (hi - lo) / steps
    total = 0.0
    for i in range(steps + 1):
        x = lo + i * dx
        cdf = 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))
        pdf = math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
        w = 0.5 if i in (0, steps) else 1.0
        total += w * x * n * pdf * cdf ** (n - 1)
    return total * dx


def busiest_rank_experts(tokens: float, num_experts: int, top_k: int, ep: int) -> float:
    """Expected distinct experts on the busiest of `ep` ranks each owning ceil(E/ep) experts."""
    local = -(-num_experts // ep)
    p = 1.0 - (1.0 - top_k / num_experts) ** tokens if tokens > 0 else 0.0
    mean = local * p
    if ep <= 1:
        return mean
    return min(float(local), mean + expected_max_std_normal(ep) * math.sqrt(local * p * (1.0 - p)))


def busiest_rank_pairs(tokens: float, top_k: int, ep: int) -> float:
    """Expected token-expert pairs on the busiest of `ep` ranks (T·k pairs, each rank 1/ep likely)."""
    pairs = tokens * top_k
    if ep <= 1:
        return pairs
    q = 1.0 / ep
    return min(pairs, pairs * q + expected_max_std_normal(ep) * math.sqrt(pairs * q * (1.0 - q)))


def expert_layer_seconds(tokens: float, *, num_experts: int, top_k: int, ep: int, flops_per_pair: float,
                         bytes_per_expert: float, flops_per_s: float, bytes_per_s: float) -> float:
    """One MoE layer's routed-expert GEMMs on one GPU (the busiest when ep > 1), roofline.

    Without EP (`ep` = 1) `flops_per_pair` / `bytes_per_expert` are one GPU's 1/tp slice of an
    expert; with EP they are a whole expert's.
    """
    if tokens <= 0:
        return 0.0
    experts = busiest_rank_experts(tokens, num_experts, top_k, ep)
    pairs = busiest_rank_pairs(tokens, top_k, ep)
    return max(pairs * flops_per_pair / flops_per_s, experts * bytes_per_expert / bytes_per_s)


def expert_knee_tokens(num_experts: int, top_k: int, flops_per_pair: float, bytes_per_expert: float,
                       flops_per_s: float, bytes_per_s: float) -> float:
    """T where the expert GEMMs turn from weight-bound to FLOP-bound (ep = 1), by bisection.

    a·T - c·D(T) is convex and 0 at T = 0 (D is concave), negative while weight-bound, so it
    crosses zero once."""
    a = top_k * flops_per_pair / flops_per_s
    c = bytes_per_expert / bytes_per_s

    def excess(t: float) -> float:
        return a * t - c * expected_distinct_experts(t, num_experts, top_k)

    lo, hi = 1.0, 2.0
    if excess(lo) >= 0:
        return lo
    while excess(hi) < 0 and hi < 1e9:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return hi
