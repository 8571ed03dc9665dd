"""What one engine step computes: the scheduler's output and the batch shape the cost model prices.

`StepBatch` is plain data handed from a scheduler to the engine and the cost model.  Its shape
fields are the only inputs of `sim.cost_model.step_time_s`, so the cost of a step never depends
on anything but what the step computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sim.request import Request


@dataclass(slots=True)
class StepBatch:
    """One step: which requests run how many tokens, and the aggregate shape."""

    scheduled: list[tuple[Request, int]] = field(default_factory=list)  # (request, new tokens) in vLLM order
    preempted: list[Request] = field(default_factory=list)
    samplers: list[Request] = field(default_factory=list)   # requests that sample a token this step
    admitted: list[Request] = field(default_factory=list)   # requests taken from the waiting queue this step
    num_prefill_tokens: int = 0       # tokens of requests with more than one new token (prompt chunks, recompute)
    num_decode_tokens: int = 0        # requests with exactly one new token
    decode_ctx_tokens: int = 0        # sum over decodes of the context they attend to (incl. the new token)
    prefill_pairs: float = 0.0        # sum over prefills of q * (prefix + (q + 1) / 2): causal attention work
    num_prefill_seqs: int = 0
    swap_in_blocks: int = 0           # v0: KV blocks copied host -> device this step
    swap_out_blocks: int = 0          # v0: KV blocks copied device -> host this step
    copy_blocks: int = 0              # v0: copy-on-write block copies this step

    def add(self, req: Request, num_new_tokens: int) -> None:
        """Append a scheduled request, updating the shape totals."""
        self.scheduled.append((req, num_new_tokens))
        if num_new_tokens == 1:
            self.num_decode_tokens += 1
            self.decode_ctx_tokens += req.num_computed + 1
        else:
            self.num_prefill_tokens += num_new_tokens
            self.num_prefill_seqs += 1
            self.prefill_pairs += num_new_tokens * (req.num_computed + (num_new_tokens + 1) / 2)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def is_empty(self) -> bool:
        return not self.scheduled and not self.swap_out_blocks and not self.swap_in_blocks
