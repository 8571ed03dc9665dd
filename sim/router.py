"""Routing requests across engine replicas (data parallelism behind a load balancer).

Policies (`engine.router`):

* `round-robin` — replica i, i+1, ... in turn.
* `least-outstanding-tokens` — fewest prompt + output tokens of unfinished requests sent to it
  (the router's own count, so never stale); ties to the lowest index.
* `least-kv-usage` — lowest `kv_cache_usage_perc` as last scraped.
* `prefix-aware` — the replica whose cache most likely holds the longest prefix of the prompt,
  from a router-side index of the block hashes it sent to each replica (as llm-d's prefix-cache
  scorer keeps one: it never asks the engines), each replica's index an LRU bounded by that
  replica's number of KV blocks; ties go to the fewest outstanding tokens.
* `weighted` — llm-d's scheduling profile: each scorer gives every replica a score in [0, 1]
  (prefix: matched leading blocks / prompt blocks; kv_usage: 1 - usage; queue: 1 - waiting /
  max waiting; outstanding_tokens: 1 - tokens / max tokens), the router picks the highest
  weighted sum (`engine.router_weights`, e.g. {prefix: 2, queue: 1, kv_usage: 1}).

Ties among the best replicas in `least-kv-usage` and `weighted` are broken by rotating from the
replica after the last one chosen (llm-d picks at random; rotation is the deterministic
equivalent, and keeps a burst seen against the same stale metrics from landing on one replica).

Staleness: with `engine.router_scrape_interval_s > 0` the router reads each replica's KV usage
and queue length from a snapshot taken every interval (as a metrics scrape would), which the
engine refreshes; 0 reads them live.  The prefix index and the outstanding-token counts are the
router's own and always current.

Pure Python; the engine (SimPy) calls `route(replicas, request)` at each arrival and
`scrape(replicas)` on the interval.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from sim.block_hash import shared_prefix_hashes
from sim.request import Request

POLICIES = ("round-robin", "least-outstanding-tokens", "least-kv-usage", "prefix-aware", "weighted")
SCORERS = ("prefix", "kv_usage", "queue", "outstanding_tokens")


class PrefixIndex:
    """Which block hashes the router has sent to each replica, LRU-bounded per replica."""

    def __init__(self, num_replicas: int, capacity_blocks: int):
        self.capacity = capacity_blocks
        self.held: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(num_replicas)]

    def matched_blocks(self, replica: int, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` the replica is believed to hold."""
        held = self.held[replica]
        n = 0
        for h in hashes:
            if h not in held:
                break
            n += 1
        return n

    def record(self, replica: int, hashes: Sequence[int]) -> None:
        held = self.held[replica]
        for h in hashes:
            if h in held:
                held.move_to_end(h)
            else:
                held[h] = None
        while len(held) > self.capacity:
            held.popitem(last=False)


class Router:
    """One routing policy over a fixed set of replicas; see the module docstring."""

    def __init__(self, policy: str, num_replicas: int, block_size: int, capacity_blocks: int,
                 weights: dict[str, float] | None = None, scrape_interval_s: float = 0.0):
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}")
        self.policy = policy
        self.block_size = block_size
        self.weights = dict(weights or {})
        if policy == "weighted" and not any(w > 0 for w in self.weights.values()):
            raise ValueError("weighted routing needs at least one positive weight")
        self.scrape_interval_s = scrape_interval_s
        self.index = PrefixIndex(num_replicas, capacity_blocks)
        self.uses_prefix = policy == "prefix-aware" or (policy == "weighted" and self.weights.get("prefix", 0) > 0)
        self.next_rr = 0
        self.last = -1
        self.kv_usage = [0.0] * num_replicas          # scraped (or live) metrics
        self.waiting = [0] * num_replicas
        self.routed = [0] * num_replicas              # requests sent to each replica
        self.routed_tokens = [0] * num_replicas       # their prompt + output tokens
        self.ready: Callable[[int], bool] | None = None   # autoscaling: which replicas take requests

    # ------------------------------------------------------------------ metrics
    def scrape(self, replicas: Sequence[Any]) -> None:
        """Refresh the router's view of each replica's KV usage and queue length."""
        for i, rep in enumerate(replicas):
            self.kv_usage[i] = float(rep.kv_state()[0])
            self.waiting[i] = len(rep.scheduler.waiting)

    # ------------------------------------------------------------------ routing
    def route(self, replicas: Sequence[Any], req: Request) -> Any:
        """The replica that gets `req` (and its parallel samples), among the ready ones when an
        autoscaler decides which are (`self.ready`)."""
        if self.ready is not None:
            idx = [i for i in range(len(replicas)) if self.ready(i)]
            if len(idx) < len(replicas):
                return self._route_among(replicas, req, idx)
        return self._route_among(replicas, req, list(range(len(replicas))))

    def _route_among(self, replicas: Sequence[Any], req: Request, idx: list[int]) -> Any:
        if self.scrape_interval_s <= 0 and self.policy in ("least-kv-usage", "weighted"):
            self.scrape(replicas)
        hashes: Sequence[int] = ()
        if self.uses_prefix and req.segments:
            hashes = shared_prefix_hashes(req.segments, self.block_size)
        p = self.policy
        if p == "round-robin":
            k = idx[self.next_rr % len(idx)]
            self.next_rr += 1
        elif p == "least-outstanding-tokens":
            k = min(idx, key=lambda i: (replicas[i].outstanding_tokens, i))
        elif p == "least-kv-usage":
            k = self._rotate_best([-u for u in self.kv_usage], idx)
        elif p == "prefix-aware":
            matched = {i: self.index.matched_blocks(i, hashes) for i in idx}
            k = min(idx, key=lambda i: (-matched[i], replicas[i].outstanding_tokens, i))
        else:
            k = self._rotate_best(self._weighted_scores(replicas, req, hashes), idx)
        if hashes:
            self.index.record(k, hashes)
        self.last = k
        self.routed[k] += 1
        self.routed_tokens[k] += req.num_prompt_tokens + req.max_tokens
        return replicas[k]

    def _weighted_scores(self, replicas: Sequence[Any], req: Request, hashes: Sequence[int]) -> list[float]:
        n = len(replicas)
        w = self.weights
        scores = [0.0] * n
        if w.get("prefix", 0) > 0:
            blocks = max(req.num_prompt_tokens // self.block_size, 1)
            for i in range(n):
                scores[i] += w["prefix"] * self.index.matched_blocks(i, hashes) / blocks
        if w.get("kv_usage", 0) > 0:
            for i in range(n):
                scores[i] += w["kv_usage"] * (1.0 - self.kv_usage[i])
        if w.get("queue", 0) > 0:
            top = max(self.waiting)
            for i in range(n):
                scores[i] += w["queue"] * (1.0 - self.waiting[i] / top if top else 1.0)
        if w.get("outstanding_tokens", 0) > 0:
            tok = [r.outstanding_tokens for r in replicas]
            top_t = max(tok)
            for i in range(n):
                scores[i] += w["outstanding_tokens"] * (1.0 - tok[i] / top_t if top_t else 1.0)
        return scores

    def _rotate_best(self, scores: list[float], idx: list[int]) -> int:
        """The best-scoring replica of `idx`; among equals, the first after the last one chosen."""
        n = len(scores)
        best = max(scores[i] for i in idx)
        allowed = set(idx)
        for j in range(1, n + 1):
            i = (self.last + j) % n
            if i in allowed and scores[i] >= best - 1e-12:
                return i
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ report
    def load_imbalance(self) -> float:
        """max / mean of the tokens routed to each replica (1.0 = perfectly even)."""
        tot = sum(self.routed_tokens)
        if not tot:
            return 1.0
        return max(self.routed_tokens) * len(self.routed_tokens) / tot
