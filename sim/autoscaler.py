"""Autoscaling replicas over time-varying traffic, the way the Kubernetes HPA (and KEDA) scale a
serving deployment on a scraped metric.

Every `interval_s` the autoscaler reads the metric over the *ready* replicas — mean KV usage
(`kv_cache_usage_perc`), mean waiting requests (`num_requests_waiting`), or arrivals per second
per replica — and computes the HPA's desired count, `ceil(ready * metric / target)`, left alone
within `tolerance` of the target and clamped to [min_replicas, max_replicas].  Scaling up starts
new replicas, which serve only after `provisioning_delay_s` (node, image and weights); scaling
down stops routing to the most recently started replicas, which drain their requests and then
stop.  Scale-ups are at least `scale_up_cooldown_s` apart, and a scale-down waits
`scale_down_cooldown_s` after any change (the HPA's stabilisation window).  A replica costs money
from the moment it is started until it has drained.

Pure policy and bookkeeping; the engine (SimPy) calls `tick(now_s, replicas, arrivals)` on the
interval and reads `ready`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sim.schema import Ctx, positive

OFF, PROVISIONING, READY, DRAINING = "off", "provisioning", "ready", "draining"


@dataclass(frozen=True, slots=True)
class AutoscalingConfig:
    """`engine.autoscaling`; `metric: none` (the default) keeps `num_replicas` fixed."""

    metric: Literal["none", "kv_usage", "queue_length", "request_rate"] = "none"
    target: float | None = None            # per replica: KV usage fraction, waiting requests, or req/s
    min_replicas: int = 1
    max_replicas: int | None = None        # None: engine.num_replicas (the replicas that exist)
    initial_replicas: int | None = None    # None: min_replicas
    interval_s: float = 15.0               # scrape + decision period
    provisioning_delay_s: float = 120.0    # start -> ready
    scale_up_cooldown_s: float = 60.0
    scale_down_cooldown_s: float = 300.0
    tolerance: float = 0.1                 # HPA: no change while |metric / target - 1| <= tolerance

    def validate(self, ctx: Ctx) -> None:
        if self.metric == "none":
            return
        if self.target is None:
            raise ctx.at("target").error(f"required by metric: {self.metric}")
        positive(ctx, "target", self.target)
        if self.metric == "kv_usage" and self.target > 1:
            raise ctx.at("target").error("kv_usage is a fraction in (0, 1]", self.target)
        positive(ctx, "min_replicas", self.min_replicas)
        for key in ("interval_s", "tolerance"):
            positive(ctx, key, getattr(self, key))
        for key in ("provisioning_delay_s", "scale_up_cooldown_s", "scale_down_cooldown_s"):
            positive(ctx, key, getattr(self, key), allow_zero=True)
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ctx.at("max_replicas").error(f"expected >= min_replicas ({self.min_replicas})", self.max_replicas)
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= (
                self.max_replicas or self.initial_replicas):
            raise ctx.at("initial_replicas").error("expected between min_replicas and max_replicas", self.initial_replicas)


@dataclass
class Timeline:
    """What the autoscaler saw and did at each tick."""

    t_s: list[float] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)      # provisioning + ready + draining (billed)
    metric: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)


class Autoscaler:
    """Replica states and the scaling decisions of one run."""

    def __init__(self, cfg: AutoscalingConfig, num_replicas: int):
        self.cfg = cfg
        self.max = min(cfg.max_replicas or num_replicas, num_replicas)
        self.min = min(cfg.min_replicas, self.max)
        n0 = cfg.initial_replicas if cfg.initial_replicas is not None else self.min
        self.state = [READY if i < n0 else OFF for i in range(num_replicas)]
        self.ready_at = [0.0] * num_replicas
        self.started_at = [0.0 if i < n0 else -1.0 for i in range(num_replicas)]
        self.billed_s = 0.0                    # replica-seconds started (provisioning to drained)
        self.last_up_s = -math.inf
        self.last_change_s = -math.inf
        self.last_tick_s = 0.0
        self.timeline = Timeline()
        self.num_scale_ups = 0
        self.num_scale_downs = 0

    def ready(self, i: int) -> bool:
        return self.state[i] == READY

    def _count(self, *states: str) -> int:
        return sum(1 for s in self.state if s in states)

    def observe(self, replicas: Sequence[Any], arrivals: int, dt_s: float) -> float:
        ready = [r for i, r in enumerate(replicas) if self.state[i] == READY]
        if not ready:
            return 0.0
        m = self.cfg.metric
        if m == "kv_usage":
            return sum(float(r.kv_state()[0]) for r in ready) / len(ready)
        if m == "queue_length":
            return sum(len(r.scheduler.waiting) for r in ready) / len(ready)
        return arrivals / max(dt_s, 1e-12) / len(ready)

    def tick(self, now_s: float, replicas: Sequence[Any], arrivals: int) -> None:
        """One scrape-and-decide period: bill, finish provisioning and draining, then scale."""
        cfg = self.cfg
        self.billed_s += self._count(PROVISIONING, READY, DRAINING) * (now_s - self.last_tick_s)
        dt = now_s - self.last_tick_s
        self.last_tick_s = now_s
        for i, s in enumerate(self.state):
            if s == PROVISIONING and now_s >= self.ready_at[i]:
                self.state[i] = READY
            elif s == DRAINING and not replicas[i].scheduler.has_work:
                self.state[i] = OFF
        metric = self.observe(replicas, arrivals, dt)
        ready = self._count(READY)
        current = self._count(PROVISIONING, READY)
        assert cfg.target is not None
        ratio = metric / cfg.target
        desired = current
        if ready and abs(ratio - 1.0) > cfg.tolerance:
            desired = max(self.min, min(self.max, math.ceil(ready * ratio)))
        if desired > current and now_s - self.last_up_s >= cfg.scale_up_cooldown_s:
            self._start(desired - current, now_s)
        elif desired < current and now_s - self.last_change_s >= cfg.scale_down_cooldown_s:
            self._stop(current - desired, now_s)
        tl = self.timeline
        tl.t_s.append(now_s)
        tl.ready.append(self._count(READY))
        tl.started.append(self._count(PROVISIONING, READY, DRAINING))
        tl.metric.append(metric)
        tl.desired.append(desired)

    def _start(self, k: int, now_s: float) -> None:
        for i, s in enumerate(self.state):
            if k == 0:
                break
            if s == DRAINING:            # a draining replica is taken back at once
                self.state[i] = READY
                k -= 1
        for i, s in enumerate(self.state):
            if k == 0:
                break
            if s == OFF:
                self.state[i] = PROVISIONING
                self.ready_at[i] = now_s + self.cfg.provisioning_delay_s
                self.started_at[i] = now_s
                k -= 1
        self.last_up_s = self.last_change_s = now_s
        self.num_scale_ups += 1

    def _stop(self, k: int, now_s: float) -> None:
        # provisioning replicas are cancelled first, then the most recently started ready ones drain
        order = sorted(range(len(self.state)), key=lambda i: (self.state[i] != PROVISIONING, -self.started_at[i], -i))
        for i in order:
            if k == 0 or self._count(READY) <= 1 and self.state[i] == READY:
                break
            if self.state[i] == PROVISIONING:
                self.state[i] = OFF
                k -= 1
            elif self.state[i] == READY:
                self.state[i] = DRAINING
                k -= 1
        self.last_change_s = now_s
        self.num_scale_downs += 1

    def finish(self, end_s: float) -> None:
        """Bill the time from the last tick to the end of the run."""
        self.billed_s += self._count(PROVISIONING, READY, DRAINING) * max(end_s - self.last_tick_s, 0.0)
        self.last_tick_s = end_s
