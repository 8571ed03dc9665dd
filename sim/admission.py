"""Admission control at the gateway, before routing: who is served and who gets HTTP 429.

* `token-bucket` — a bucket of `burst` tokens refilled at `rate` per second; a request takes one
  token or is rejected (a rate limiter in front of the fleet).
* `queue-length` — shed load when the fleet is saturated: a request is rejected when every
  replica already has `max_waiting` or more requests waiting (llm-d's saturation detector sheds
  the same way, on queue depth across the pool).

Rejected requests never reach an engine; they count against SLO attainment (a rejected request
did not meet its SLO) and appear as `num_rejected` in the summary.  Pure: the engine calls
`admit(now_s, replicas)` at each arrival.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sim.schema import Ctx, positive


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """`engine.admission: {policy: token-bucket, rate: 20, burst: 40}` or `{policy: queue-length, max_waiting: 64}`."""

    policy: Literal["none", "token-bucket", "queue-length"] = "none"
    rate: float | None = None          # token bucket: tokens (requests) added per second
    burst: int = 1                     # token bucket: capacity, and the tokens at t = 0
    max_waiting: int | None = None     # queue length: reject when every replica has this many waiting

    def validate(self, ctx: Ctx) -> None:
        if self.policy == "token-bucket":
            if self.rate is None:
                raise ctx.at("rate").error("required by policy: token-bucket (requests per second)")
            positive(ctx, "rate", self.rate)
            positive(ctx, "burst", self.burst)
        elif self.rate is not None:
            raise ctx.at("rate").error(f"only used by policy: token-bucket (policy is {self.policy})", self.rate)
        if self.policy == "queue-length":
            if self.max_waiting is None:
                raise ctx.at("max_waiting").error("required by policy: queue-length (waiting requests per replica)")
            positive(ctx, "max_waiting", self.max_waiting)
        elif self.max_waiting is not None:
            raise ctx.at("max_waiting").error(f"only used by policy: queue-length (policy is {self.policy})",
                                              self.max_waiting)


class Admission:
    """The gateway's admission state for one run."""

    def __init__(self, cfg: AdmissionConfig):
        self.cfg = cfg
        self.tokens = float(cfg.burst)
        self.last_s = 0.0
        self.num_rejected = 0
        self.ready: Callable[[int], bool] | None = None   # autoscaling: replicas that take requests

    def admit(self, now_s: float, replicas: Sequence[Any]) -> bool:
        cfg = self.cfg
        ok = True
        if cfg.policy == "token-bucket":
            assert cfg.rate is not None
            self.tokens = min(float(cfg.burst), self.tokens + (now_s - self.last_s) * cfg.rate)
            self.last_s = now_s
            if self.tokens >= 1.0:
                self.tokens -= 1.0
            else:
                ok = False
        elif cfg.policy == "queue-length":
            assert cfg.max_waiting is not None
            ok = any(len(rep.scheduler.waiting) < cfg.max_waiting for i, rep in enumerate(replicas)
                     if self.ready is None or self.ready(i))
        if not ok:
            self.num_rejected += 1
        return ok
