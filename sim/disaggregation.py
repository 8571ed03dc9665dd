"""Prefill/decode disaggregation: separate prefill and decode pools with a KV transfer between them,
as vLLM runs it with a KV connector (NixlConnector) behind a P/D proxy (vLLM's disaggregated
serving examples, llm-d):

1. the proxy sends the request to a prefill replica with `max_tokens=1`; the prefill replica
   computes the prompt (chunked, prefix-cached) and samples one token, which the proxy drops;
2. the prompt's KV blocks travel to a decode replica over the link between them: time =
   `latency_s + bytes / bandwidth`, bytes = prompt tokens x KV bytes per token of one TP rank
   (every rank sends its shard in parallel), transfers into one decode replica queued in arrival
   order (its NIC);
3. the decode replica admits the request once its KV has arrived and its blocks fit, as a request
   whose prompt is computed but for the last token (vLLM recomputes it to get the logits), so its
   first step samples the first output token: that is the TTFT the client sees.
   A request preempted on the decode side recomputes its prompt there.

Simplification, documented: the prefill replica frees the request's blocks when its token is
sampled (vLLM keeps them until the decode side has read them, a few milliseconds later).

Selective disaggregation: with `threshold_tokens` > 0 only prompts longer than that go through a
prefill replica; shorter ones are prefilled on the decode replica itself (co-located), as llm-d's
selective P/D does for prompts whose uncached part is short.

Link presets (bandwidth per GPU and direction, base latency per transfer): NVLink 4 (H100/H200
within a node) 450 GB/s, 10 us; InfiniBand NDR 400 Gb/s 50 GB/s, 20 us; RoCE 200 Gb/s 25 GB/s,
30 us; PCIe gen5 x16 (through the host) 50 GB/s, 50 us.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sim.schema import Ctx, positive

LINKS: dict[str, tuple[float, float]] = {          # name -> (bytes/s per GPU per direction, latency s)
    "nvlink": (450e9, 10e-6),
    "infiniband": (50e9, 20e-6),
    "roce": (25e9, 30e-6),
    "pcie": (50e9, 50e-6),
}


@dataclass(frozen=True, slots=True)
class DisaggregationConfig:
    """`engine.disaggregation: {prefill_replicas: 1, link: infiniband}`; 0 prefill replicas = co-located."""

    prefill_replicas: int = 0                 # the prefill pool; engine.num_replicas is the decode pool
    prefill_gpu: str | None = None            # the prefill pool's GPU (None: hardware.gpu)
    link: Literal["nvlink", "infiniband", "roce", "pcie"] = "infiniband"
    bandwidth_bytes_per_s: float | None = None   # overrides the link preset
    latency_s: float | None = None               # overrides the link preset
    threshold_tokens: int = 0                 # selective: only prompts longer than this are disaggregated
    prefill_router: str = "least-outstanding-tokens"

    @property
    def enabled(self) -> bool:
        return self.prefill_replicas > 0

    def link_bandwidth(self) -> float:
        return self.bandwidth_bytes_per_s if self.bandwidth_bytes_per_s is not None else LINKS[self.link][0]

    def link_latency(self) -> float:
        return self.latency_s if self.latency_s is not None else LINKS[self.link][1]

    def validate(self, ctx: Ctx) -> None:
        positive(ctx, "prefill_replicas", self.prefill_replicas, allow_zero=True)
        positive(ctx, "threshold_tokens", self.threshold_tokens, allow_zero=True)
        if self.bandwidth_bytes_per_s is not None:
            positive(ctx, "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)
        if self.latency_s is not None:
            positive(ctx, "latency_s", self.latency_s, allow_zero=True)
        from sim.router import POLICIES
        if self.prefill_router not in POLICIES or self.prefill_router == "weighted":
            raise ctx.at("prefill_router").error(f"expected one of {', '.join(p for p in POLICIES if p != 'weighted')}",
                                                 self.prefill_router)
        if self.prefill_gpu is not None:
            from sim.hardware import find_preset
            if find_preset(self.prefill_gpu) is None:
                raise ctx.at("prefill_gpu").error("unknown GPU preset", self.prefill_gpu)


def transfer_time_s(cfg: DisaggregationConfig, prompt_tokens: int, kv_bytes_per_token_per_rank: int) -> float:
    """Seconds to move a prompt's KV blocks from a prefill to a decode replica (one TP rank's
    shard; the ranks transfer in parallel)."""
    return cfg.link_latency() + prompt_tokens * kv_bytes_per_token_per_rank / cfg.link_bandwidth()


def goes_to_prefill_pool(cfg: DisaggregationConfig, prompt_tokens: int) -> bool:
    return cfg.enabled and prompt_tokens > cfg.threshold_tokens


@dataclass(frozen=True)
class PrefillPoolSetup:
    """What the engine needs to run a prefill pool: its replicas and router, the link, and the KV
    bytes per prompt token of one TP rank."""

    cfg: DisaggregationConfig
    replicas: list[Any]
    route: Any
    kv_bytes_per_token_per_rank: int
