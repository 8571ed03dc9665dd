"""vLLM V0's per-step scheduling budget (vllm/core/scheduler.py `SchedulingBudget`, vLLM 0.8.5).

Tokens and sequences are added and subtracted *per request id*: adding twice for one request is
a no-op and subtracting a request that was never added is a no-op.  `_schedule_default` adds the
running groups' sequences before scheduling, and the preemption loop subtracts the group being
scheduled (not the victim); these quirks decide whether a swapped group fits `max_num_seqs`, so
they are kept.  No prefix caching here, so there are no cached tokens.
"""

from __future__ import annotations


class SchedulingBudget:
    """Tokens and sequences scheduled so far in one step, against the two limits."""

    __slots__ = ("token_budget", "max_num_seqs", "num_batched_tokens", "num_curr_seqs", "_token_ids", "_seq_ids")

    def __init__(self, token_budget: int, max_num_seqs: int):
        self.token_budget = token_budget
        self.max_num_seqs = max_num_seqs
        self.num_batched_tokens = 0
        self.num_curr_seqs = 0
        self._token_ids: set[int] = set()   # request ids whose tokens are counted
        self._seq_ids: set[int] = set()     # request ids whose sequences are counted

    def can_schedule(self, num_new_tokens: int, num_new_seqs: int) -> bool:
        return (self.num_batched_tokens + num_new_tokens <= self.token_budget
                and self.num_curr_seqs + num_new_seqs <= self.max_num_seqs)

    @property
    def remaining_token_budget(self) -> int:
        return self.token_budget - self.num_batched_tokens

    def add_num_batched_tokens(self, req_id: int, n: int) -> None:
        if req_id not in self._token_ids:
            self._token_ids.add(req_id)
            self.num_batched_tokens += n

    def subtract_num_batched_tokens(self, req_id: int, n: int) -> None:
        if req_id in self._token_ids:
            self._token_ids.remove(req_id)
            self.num_batched_tokens -= n

    def add_num_seqs(self, req_id: int, n: int) -> None:
        if req_id not in self._seq_ids:
            self._seq_ids.add(req_id)
            self.num_curr_seqs += n

    def subtract_num_seqs(self, req_id: int, n: int) -> None:
        if req_id in self._seq_ids:
            self._seq_ids.remove(req_id)
            self.num_curr_seqs -= n
