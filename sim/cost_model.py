"""Step cost: pure functions from one step's batch shape and a cost profile to seconds.

    step_s = overhead + linear(T) + decode_attn(D, C) + prefill_attn(P, W) + allreduce(T)
             + swap(blocks in/out) + copies(blocks) + proposer

with T = tokens in the step, D = decode sequences, C = Σ context tokens they attend to,
P = prefill (chunk) tokens, W = Σ q·(prefix + (q+1)/2) causal attention pairs.

Speculative decoding (sim.spec_decode): a decode verifying k drafts brings 1 + k query tokens —
T counts all of them (the linear layers and the all-reduce see every token) — while attention
reads the sequence's KV once (the k + 1 queries share one pass of a FlashAttention-style
kernel; C counts the context up to the last draft), so D still counts sequences.  `proposer`
is k forward passes of the drafter over the sequences that sampled (or n-gram CPU time).

* linear(T): all weight GEMMs of all layers and the LM head for T tokens — a piecewise-linear
  table over T (roofline: max(FLOPs / (peak·eff), weight bytes / (HBM bw·eff)) per point;
  calibrated: cuBLAS timings).  Small batches are bound by reading the weights, large ones by
  FLOPs: the roofline's knee is where batching stops being free.
* decode_attn: intercept + s_per_seq·D + s_per_kv_token·C: reading every cached KV token once
  (bytes = 2·layers·kv_heads·head_dim·dtype bytes per token) at the HBM bandwidth; the per-seq
  term covers block-table walks (a smaller block size means more, smaller reads), and the kernel's
  launch intercept.  Per (kv_dtype, block_size) when calibrated.
* prefill_attn: intercept + s_per_query_token·P + s_per_pair·W (FLOPs of causal attention).
* allreduce (TP > 1): 2 all-reduces per layer of T·hidden·dtype bytes (ring: 2(t-1)/t of the data
  over the interconnect) plus a per-call latency.
* swap / copy: s_per_block_copy per block plus bytes over the host link (or HBM for copies).

A profile is a `CostProfile`; `roofline_profile()` derives one from datasheets, `load_profile()`
reads a calibrated JSON (docs/profile-schema.md).  `kind: constant` prices every step the same.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.batch import StepBatch
from sim.errors import ScenarioError
from sim.spec_runtime import ProposerCost, proposer_time_s

SCHEMA = "pagesim-profile/1"


@dataclass(frozen=True, slots=True)
class AttnCoeffs:
    intercept_s: float = 0.0
    s_per_seq: float = 0.0           # decode only
    s_per_kv_token: float = 0.0      # decode only
    s_per_query_token: float = 0.0   # prefill only
    s_per_pair: float = 0.0          # prefill only


@dataclass(frozen=True, slots=True)
class CostProfile:
    """Coefficients of the step-cost model for one (GPU, model shard, TP) combination."""

    kind: str                                   # roofline | calibrated | engine-fit | constant
    gpu: str
    model: str
    tensor_parallel_size: int = 1
    step_overhead_s: float = 0.0
    constant_step_s: float = 0.0
    linear_tokens: tuple[float, ...] = (1.0,)
    linear_seconds: tuple[float, ...] = (0.0,)
    decode_attention: dict[str, dict[int, AttnCoeffs]] = field(default_factory=dict)
    prefill_attention: dict[str, dict[int, AttnCoeffs]] = field(default_factory=dict)
    allreduce_s_per_call: float = 0.0
    allreduce_s_per_token: float = 0.0          # bytes per token folded in (hidden · dtype · ring factor)
    allreduce_calls_per_step: int = 0
    swap_s_per_block_copy: float = 0.0
    swap_s_per_byte: float = 0.0
    copy_s_per_block: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)
    # linear_s by token count, filled on first use: a run asks for the same few sizes over and over
    # (the table's bisect is a call into a Python module each time).  Not an __init__ argument, so
    # dataclasses.replace() starts a copy with an empty one.
    linear_memo: dict[int, float] = field(default_factory=dict, init=False, compare=False, repr=False)

    def linear_s(self, tokens: int) -> float:
        """Piecewise-linear interpolation of the linear-layer table (linear extrapolation)."""
        s = self.linear_memo.get(tokens)
        if s is None:
            s = self.linear_memo[tokens] = self._interpolate_linear(tokens)
        return s

    def _interpolate_linear(self, tokens: int) -> float:
        xs, ys = self.linear_tokens, self.linear_seconds
        if len(xs) == 1:
            return ys[0] * tokens / xs[0] if xs[0] else ys[0]
        i = bisect.bisect_left(xs, tokens)
        if i == 0:
            i = 1
        elif i >= len(xs):
            i = len(xs) - 1
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)

    def attention(self, table: dict[str, dict[int, AttnCoeffs]], kv_dtype: str, block_size: int) -> AttnCoeffs:
        """Coefficients for (kv_dtype, block_size): exact, else nearest block size, else `auto`."""
        by_bs = table.get(kv_dtype) or table.get("auto")
        if not by_bs:
            return AttnCoeffs()
        if block_size in by_bs:
            return by_bs[block_size]
        nearest = min(by_bs, key=lambda b: (abs(b - block_size), b))
        return by_bs[nearest]


@dataclass(frozen=True, slots=True)
class StepCoster:
    """A profile bound to one engine's block size and KV dtype: the hot-loop entry point."""

    profile: CostProfile
    block_size: int
    kv_dtype: str
    kv_bytes_per_block: int
    async_scheduling: bool = False
    proposer: ProposerCost | None = None        # speculative decoding's drafter (None: off)

    def step_time_s(self, batch: StepBatch) -> float:
        pc = self.proposer
        if pc is None:
            return step_time_s(self, batch.num_prefill_tokens, batch.num_decode_tokens, batch.decode_ctx_tokens,
                               batch.prefill_pairs, batch.swap_in_blocks + batch.swap_out_blocks, batch.copy_blocks)
        return step_time_s(self, batch.num_prefill_tokens, batch.num_decode_tokens, batch.decode_ctx_tokens,
                           batch.prefill_pairs, batch.swap_in_blocks + batch.swap_out_blocks, batch.copy_blocks,
                           batch.num_spec_tokens, proposer_time_s(pc, batch.num_draft_seqs, batch.draft_ctx_tokens))


def step_time_s(c: StepCoster, prefill_tokens: int, decode_seqs: int, decode_ctx_tokens: int,
                prefill_pairs: float, swap_blocks: int = 0, copy_blocks: int = 0,
                spec_tokens: int = 0, proposer_s: float = 0.0) -> float:
    """Seconds one engine step takes (see the module docstring for every term).
    `spec_tokens`: draft tokens verified (beyond one token per decode); `proposer_s`: the drafter."""
    p = c.profile
    if p.kind == "constant":
        return p.constant_step_s
    tokens = prefill_tokens + decode_seqs + spec_tokens
    gpu = 0.0
    if tokens:
        gpu += p.linear_s(tokens)
        if decode_seqs:
            a = p.attention(p.decode_attention, c.kv_dtype, c.block_size)
            gpu += a.intercept_s + a.s_per_seq * decode_seqs + a.s_per_kv_token * decode_ctx_tokens
        if prefill_tokens:
            a = p.attention(p.prefill_attention, c.kv_dtype, c.block_size)
            gpu += a.intercept_s + a.s_per_query_token * prefill_tokens + a.s_per_pair * prefill_pairs
        if p.allreduce_calls_per_step:
            gpu += p.allreduce_calls_per_step * p.allreduce_s_per_call + p.allreduce_s_per_token * tokens
    if swap_blocks:
        gpu += swap_blocks * (p.swap_s_per_block_copy + p.swap_s_per_byte * c.kv_bytes_per_block)
    if copy_blocks:
        gpu += copy_blocks * p.copy_s_per_block
    gpu += proposer_s
    # Async scheduling overlaps the CPU work of step k+1 with the GPU work of step k.
    if c.async_scheduling:
        return max(gpu, p.step_overhead_s)
    return gpu + p.step_overhead_s


# ---------------------------------------------------------------------------- profile files
def _attn_table(raw: dict[str, Any], where: str) -> dict[str, dict[int, AttnCoeffs]]:
    out: dict[str, dict[int, AttnCoeffs]] = {}
    for dtype, by_bs in (raw or {}).items():
        out[dtype] = {}
        for bs, coeffs in by_bs.items():
            try:
                out[dtype][int(bs)] = AttnCoeffs(**{k: float(v) for k, v in coeffs.items()})
            except (TypeError, ValueError) as e:
                raise ScenarioError(where, f"{dtype}.{bs}", f"bad attention coefficients: {e}") from None
    return out


def profile_from_dict(d: dict[str, Any], where: str) -> CostProfile:
    """Build a CostProfile from the JSON schema of docs/profile-schema.md."""
    if d.get("schema") != SCHEMA:
        raise ScenarioError(where, "schema", f"expected '{SCHEMA}'", d.get("schema"), True)
    kind = d.get("kind")
    if kind not in ("roofline", "calibrated", "engine-fit", "constant"):
        raise ScenarioError(where, "kind", "expected roofline | calibrated | engine-fit | constant", kind, True)
    lin = d.get("linear") or {"tokens": [1], "seconds": [0.0]}
    xs, ys = [float(x) for x in lin.get("tokens", [])], [float(y) for y in lin.get("seconds", [])]
    if kind != "constant" and (not xs or len(xs) != len(ys) or any(b <= a for a, b in zip(xs, xs[1:], strict=False))):
        raise ScenarioError(where, "linear", "expected equal-length 'tokens' (strictly increasing) and 'seconds' lists")
    ar = d.get("allreduce") or {}
    sw = d.get("swap") or {}
    return CostProfile(
        kind=kind, gpu=str(d.get("gpu", "")), model=str(d.get("model", "")),
        tensor_parallel_size=int(d.get("tensor_parallel_size", 1)),
        step_overhead_s=float(d.get("step_overhead_s", 0.0)),
        constant_step_s=float(d.get("constant_step_s", 0.0)),
        linear_tokens=tuple(xs or [1.0]), linear_seconds=tuple(ys or [0.0]),
        decode_attention=_attn_table(d.get("decode_attention", {}), where),
        prefill_attention=_attn_table(d.get("prefill_attention", {}), where),
        allreduce_s_per_call=float(ar.get("s_per_call", 0.0)),
        allreduce_s_per_token=float(ar.get("s_per_token", 0.0)),
        allreduce_calls_per_step=int(ar.get("calls_per_step", 0)),
        swap_s_per_block_copy=float(sw.get("s_per_block_copy", 0.0)),
        swap_s_per_byte=float(sw.get("s_per_byte", 0.0)),
        copy_s_per_block=float(d.get("copy_s_per_block", 0.0)),
        provenance=dict(d.get("provenance", {})),
    )


def profile_to_dict(p: CostProfile) -> dict[str, Any]:
    def table(t: dict[str, dict[int, AttnCoeffs]]) -> dict[str, Any]:
        return {dt: {str(bs): {k: getattr(c, k) for k in c.__slots__} for bs, c in by.items()} for dt, by in t.items()}
    return {
        "schema": SCHEMA, "kind": p.kind, "gpu": p.gpu, "model": p.model,
        "tensor_parallel_size": p.tensor_parallel_size, "step_overhead_s": p.step_overhead_s,
        "constant_step_s": p.constant_step_s,
        "linear": {"tokens": list(p.linear_tokens), "seconds": list(p.linear_seconds)},
        "decode_attention": table(p.decode_attention), "prefill_attention": table(p.prefill_attention),
        "allreduce": {"s_per_call": p.allreduce_s_per_call, "s_per_token": p.allreduce_s_per_token,
                      "calls_per_step": p.allreduce_calls_per_step},
        "swap": {"s_per_block_copy": p.swap_s_per_block_copy, "s_per_byte": p.swap_s_per_byte},
        "copy_s_per_block": p.copy_s_per_block, "provenance": p.provenance,
    }


def load_profile(path: str | Path, where: str = "hardware.profile") -> CostProfile:
    """Read a profile JSON file; every problem is a one-line ScenarioError."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScenarioError(str(path), "", "profile file not found") from None
    except json.JSONDecodeError as e:
        raise ScenarioError(str(path), "", f"not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict):
        raise ScenarioError(str(path), "", "expected a JSON object")
    return profile_from_dict(d, str(path))


def constant_profile(step_s: float) -> CostProfile:
    """Every step takes `step_s` seconds: a step clock for conformance tests and teaching."""
    return CostProfile(kind="constant", gpu="", model="", constant_step_s=step_s)
