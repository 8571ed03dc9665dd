"""P/D disaggregation at run time (the SimPy side of `sim.disaggregation`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy

from sim.disaggregation import PrefillPoolSetup, transfer_time_s
from sim.replica import Replica
from sim.request import Request


class PrefillPool:
    """P/D disaggregation at run time (sim.disaggregation): the prefill leg of each request on a
    prefill replica, the KV transfer into the decode replica chosen at arrival (one transfer at a
    time per decode replica), then the decode leg."""

    def __init__(self, env: simpy.Environment, setup: PrefillPoolSetup, decode: list[Replica]):
        self.env = env
        self.setup = setup
        self.links = [simpy.Resource(env, capacity=1) for _ in decode]
        self.legs: dict[int, tuple[Request, Replica]] = {}      # req_id -> (decode leg, its replica)
        self.transfer_s: list[float] = []
        for rep in setup.replicas:
            rep.handoff = self.handoff

    def send(self, req: Request, decode_rep: Replica) -> None:
        decode_rep.outstanding_tokens += req.num_prompt_tokens + req.max_tokens
        self.legs[req.req_id] = (req, decode_rep)
        p_leg = Request(req.req_id, req.arrival_s, req.num_prompt_tokens, 1, req.segments,
                        content_key=req.content_key, parent_id=req.parent_id, priority=req.priority)
        self.setup.route(self.setup.replicas, p_leg).add_request(p_leg)

    def handoff(self, p_leg: Request, now_s: float) -> None:
        self.env.process(self._transfer(p_leg))

    def _transfer(self, p_leg: Request) -> Generator[Any, Any, None]:
        req, rep = self.legs.pop(p_leg.req_id)
        t0 = self.env.now
        with self.links[rep.index].request() as turn:
            yield turn
            yield self.env.timeout(transfer_time_s(self.setup.cfg, req.num_prompt_tokens,
                                                   self.setup.kv_bytes_per_token_per_rank))
        self.transfer_s.append(self.env.now - t0)
        req.num_computed = req.num_prompt_tokens - 1      # the KV is here; the last prompt token is recomputed
        req.prefix_hit_tokens = max(p_leg.prefix_hit_tokens, 0)
        rep.add_request(req, counted=True)
