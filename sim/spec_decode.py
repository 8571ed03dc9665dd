"""Speculative decoding (vLLM's `speculative_config`): the acceptance model, the proposer's cost,
the drafter's memory, and vLLM's `SpecDecodingStats` counters.

What a step does with speculative decoding on (vLLM 0.32, vllm/v1/core/sched/scheduler.py,
vllm/v1/worker/gpu_model_runner.py, vllm/v1/spec_decode/):

* a decoding request carries k draft tokens (`spec_token_ids`, proposed at the end of the step
  that sampled its last token); the scheduler gives it `1 + k` new tokens and KV slots for them
  plus `num_lookahead_tokens` more (k for EAGLE-style heads and draft models, 0 for n-gram);
* the target model verifies all `1 + k` positions in one forward pass (rejection sampler): the
  first rejected draft is replaced by the target's token, or, all accepted, a bonus token is
  added, so a sequence emits `accepted + 1` tokens;
* `update_from_output` rolls `num_computed_tokens` back by the rejected drafts; the blocks stay;
* then the proposer drafts k tokens for every sequence that sampled (same engine step).

Acceptance model: position i is accepted with conditional probability r_i given positions
1..i-1 were (one `acceptance_rate` a: r_i = a, so P(position i accepted) = a^i and the expected
accepted length is Σ_{i<=k} a^i; `acceptance_rates_per_pos`; or `measured_acceptance`: the
Prometheus counters `vllm:spec_decode_num_drafts` and `..._num_accepted_tokens_per_pos` of a real
run, r_i = accepted_pos[i] / accepted_pos[i-1]).  Draws come from a per-replica Generator
seeded from the run's seed, so the workload's own random stream is the same with it on or off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from sim.schema import Ctx, positive
from sim.spec_runtime import ProposerCost, SpecDecoder

METHODS = ("ngram", "eagle", "eagle3", "mtp", "draft_model")
HEAD_METHODS = ("eagle", "eagle3", "mtp")          # one extra decoder layer on the target's hidden states
# vLLM's n-gram proposer (vllm/v1/spec_decode/ngram_proposer.py) runs on the CPU with numba:
# a suffix match over each sequence's tokens.  ~10 µs per sequence is pagesim's estimate for
# prompts of a few thousand tokens; it is added to the step (it runs before the next schedule).
NGRAM_CPU_S_PER_SEQ = 10e-6


@dataclass(frozen=True, slots=True)
class MeasuredAcceptance:
    """Counters of a real run (vLLM Prometheus): `vllm:spec_decode_num_drafts` and
    `vllm:spec_decode_num_accepted_tokens_per_pos` (one count per position)."""

    num_drafts: int
    num_accepted_tokens_per_pos: list[int]

    def validate(self, ctx: Ctx) -> None:
        positive(ctx, "num_drafts", self.num_drafts)
        prev = self.num_drafts
        for i, n in enumerate(self.num_accepted_tokens_per_pos):
            if not 0 <= n <= prev:
                raise ctx.at(f"num_accepted_tokens_per_pos[{i}]").error(
                    f"expected 0 <= count <= {prev} (a position is accepted only after the one before it)", n)
            prev = n


@dataclass(frozen=True, slots=True)
class SpeculativeConfig:
    """`engine.speculative_config` (vLLM's names): method, k and how often drafts are accepted."""

    method: Literal["ngram", "eagle", "eagle3", "mtp", "draft_model"]
    num_speculative_tokens: int                 # k: draft tokens proposed per sequence per step
    acceptance_rate: float | None = None        # conditional per-position rate a (P(pos i) = a^i)
    acceptance_rates_per_pos: list[float] | None = None   # conditional rates r_1..r_k
    measured_acceptance: MeasuredAcceptance | None = None  # rates from a real run's counters
    model: str | None = None                    # draft_model: the draft model (a preset name or config.json)
    draft_tensor_parallel_size: int | None = None  # draft_model: its TP (vLLM: 1 or the target's)
    prompt_lookup_max: int | None = None        # ngram: window sizes (recorded; acceptance is the model's)
    prompt_lookup_min: int | None = None
    ngram_cpu_s_per_seq: float = NGRAM_CPU_S_PER_SEQ  # ngram: proposer CPU seconds per sequence per step

    def validate(self, ctx: Ctx) -> None:
        k = self.num_speculative_tokens
        if k < 1:
            raise ctx.at("num_speculative_tokens").error("expected an integer >= 1", k)
        given = [n for n in ("acceptance_rate", "acceptance_rates_per_pos", "measured_acceptance")
                 if getattr(self, n) is not None]
        if len(given) != 1:
            raise ctx.error("give exactly one of acceptance_rate, acceptance_rates_per_pos, measured_acceptance"
                            + (f" (got {', '.join(given)})" if given else ""))
        if self.acceptance_rate is not None and not 0.0 <= self.acceptance_rate <= 1.0:
            raise ctx.at("acceptance_rate").error("expected a probability in [0, 1]", self.acceptance_rate)
        for key in ("acceptance_rates_per_pos", "measured_acceptance"):
            rates = self.acceptance_rates_per_pos if key == "acceptance_rates_per_pos" else (
                self.measured_acceptance.num_accepted_tokens_per_pos if self.measured_acceptance else None)
            if rates is None:
                continue
            where = ctx.at(key if key == "acceptance_rates_per_pos" else "measured_acceptance.num_accepted_tokens_per_pos")
            if len(rates) != k:
                raise where.error(f"expected {k} values (num_speculative_tokens)", list(rates))
            if key == "acceptance_rates_per_pos":
                for i, r in enumerate(rates):
                    if not 0.0 <= r <= 1.0:
                        raise ctx.at(f"{key}[{i}]").error("expected a probability in [0, 1]", r)
        if self.method == "draft_model" and self.model is None:
            raise ctx.at("model").error("method draft_model needs the draft model (a preset name or a config.json)")
        if self.model is not None and self.method == "draft_model":
            from sim.model_catalog import load_model
            load_model(self.model, ctx.at("model"))
        if self.draft_tensor_parallel_size is not None:
            positive(ctx, "draft_tensor_parallel_size", self.draft_tensor_parallel_size)
        positive(ctx, "ngram_cpu_s_per_seq", self.ngram_cpu_s_per_seq, allow_zero=True)

    @property
    def rates(self) -> tuple[float, ...]:
        """Conditional acceptance rates r_1..r_k."""
        k = self.num_speculative_tokens
        if self.acceptance_rate is not None:
            return (self.acceptance_rate,) * k
        if self.acceptance_rates_per_pos is not None:
            return tuple(float(r) for r in self.acceptance_rates_per_pos)
        m = self.measured_acceptance
        assert m is not None
        return rates_from_counts(m.num_drafts, m.num_accepted_tokens_per_pos)

    @property
    def num_lookahead_tokens(self) -> int:
        """KV slots reserved past the verified tokens (vLLM `VllmConfig.num_lookahead_tokens`):
        the drafter writes KV for its own positions; n-gram writes none."""
        return 0 if self.method == "ngram" else self.num_speculative_tokens


def rates_from_counts(num_drafts: int, accepted_per_pos: list[int] | tuple[int, ...]) -> tuple[float, ...]:
    """Conditional rates from vLLM's counters: r_i = accepted_pos[i] / accepted_pos[i-1]."""
    out = []
    prev = num_drafts
    for n in accepted_per_pos:
        out.append(n / prev if prev else 0.0)
        prev = n
    return tuple(out)


def expected_accepted_tokens(rates: tuple[float, ...] | list[float]) -> float:
    """E[accepted drafts] = Σ_i Π_{j<=i} r_j (for one rate a: Σ_{i=1..k} a^i)."""
    total, p = 0.0, 1.0
    for r in rates:
        p *= r
        total += p
    return total


def spec_summary(decoders: list[SpecDecoder]) -> dict[str, Any]:
    """summary.json keys, named after vLLM's Prometheus counters and its logged means."""
    if not decoders:
        return {}
    k = decoders[0].k
    drafts = sum(d.num_drafts for d in decoders)
    draft_tokens = sum(d.num_draft_tokens for d in decoders)
    accepted = sum(d.num_accepted_tokens for d in decoders)
    per_pos = [sum(d.num_accepted_tokens_per_pos[i] for d in decoders) for i in range(k)]
    seqs = sum(d.num_verified_seqs for d in decoders)
    steps = sum(d.num_verify_steps for d in decoders)
    return {
        "spec_decode_num_speculative_tokens": k,
        "spec_decode_num_drafts": drafts,
        "spec_decode_num_draft_tokens": draft_tokens,
        "spec_decode_num_accepted_tokens": accepted,
        "spec_decode_num_accepted_tokens_per_pos": per_pos,
        # vLLM's log line: "Avg Draft acceptance rate" and "Mean acceptance length" (bonus token included)
        "spec_decode_acceptance_rate": accepted / draft_tokens if draft_tokens else 0.0,
        "spec_decode_mean_acceptance_length": 1.0 + accepted / drafts if drafts else 0.0,
        "spec_decode_per_pos_acceptance_rate": [n / drafts if drafts else 0.0 for n in per_pos],
        "spec_decode_mean_seqs_per_step": seqs / steps if steps else 0.0,
        "spec_decode_mean_tokens_per_step": sum(d.num_emitted_tokens for d in decoders) / steps if steps else 0.0,
    }


# ---------------------------------------------------------------------------- the drafter
def drafter_model(cfg: SpeculativeConfig, target: Any, ctx: Ctx | None = None) -> Any | None:
    """The ModelSpec the proposer runs k times per step: EAGLE/MTP = one decoder layer of the
    target's shape (+ the LM head, shared with the target); draft_model = the draft model;
    n-gram = none."""
    if cfg.method == "ngram":
        return None
    if cfg.method in HEAD_METHODS:
        return replace(target, name=f"{target.name}-{cfg.method}-head", num_layers=1)
    from sim.model_catalog import load_model
    return load_model(cfg.model, ctx or Ctx("", "engine.speculative_config.model"))


def drafter_memory(cfg: SpeculativeConfig, target: Any, tp: int, kv_dtype: str) -> tuple[int, int]:
    """(weight bytes, KV bytes per token) the drafter adds on each GPU.  EAGLE/MTP heads: one
    decoder layer (+ EAGLE's fc from 2·hidden to hidden; embedding and LM head shared with the
    target) and that layer's KV; draft_model: the whole draft model and its KV.  vLLM keeps the
    drafter's layers in the same KV blocks as the target's, so a block gets bigger."""
    model = drafter_model(cfg, target)
    if model is None:
        return 0, 0
    dtp = cfg.draft_tensor_parallel_size or tp
    if cfg.method in HEAD_METHODS:
        layer = model._layer_linear_params(dtp) * model.dtype_bytes
        fc = 2 * model.hidden_size * model.hidden_size * model.activation_bytes // dtp
        return layer + fc, model.kv_bytes_per_token(kv_dtype, dtp)
    return model.weight_bytes(dtp), model.kv_bytes_per_token(kv_dtype, dtp)


def capacity_with_drafter(capacity: Any, cfg: SpeculativeConfig, target: Any, tp: int, kv_dtype: str,
                          overridden: bool) -> Any:
    """The KV capacity once the drafter's weights and KV share the GPU (sim.memory.KVCapacity)."""
    w, kv_tok = drafter_memory(cfg, target, tp, kv_dtype)
    if not w and not kv_tok:
        return capacity
    block_bytes = capacity.block_bytes + kv_tok * capacity.block_size
    available = max(capacity.available_kv_bytes - w, 0)
    blocks = capacity.num_gpu_blocks if overridden else available // block_bytes
    return replace(capacity, num_gpu_blocks=int(blocks), block_bytes=block_bytes,
                   weight_bytes=capacity.weight_bytes + w, available_kv_bytes=available)


SPEC_RNG_STREAM = 0x5BEC                            # seed stream of the acceptance draws: [seed, this, replica]


def proposer_cost(cfg: SpeculativeConfig, sc: Any, dep: Any) -> ProposerCost:
    """The proposer's cost on this deployment: the drafter's datasheet roofline (same GPU; the
    draft model at `draft_tensor_parallel_size`), or n-gram CPU time."""
    model = drafter_model(cfg, sc.model, Ctx(sc.path, "engine.speculative_config.model"))
    eng = sc.engine
    if model is None:
        return ProposerCost(cfg.num_speculative_tokens, cfg.ngram_cpu_s_per_seq, None, dep.kv_dtype, eng.block_size)
    from sim.roofline import roofline_profile
    tp = cfg.draft_tensor_parallel_size or eng.tensor_parallel_size
    prof = roofline_profile(model, dep.hardware, tp, dep.kv_dtype)
    return ProposerCost(cfg.num_speculative_tokens, 0.0, prof, dep.kv_dtype, eng.block_size)
