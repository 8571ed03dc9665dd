"""A V0 sequence group: the n sequences of one request (vllm/sequence.py `SequenceGroup`, vLLM 0.8.5).

Parallel samples are forked from one prompt (`sim.block_manager_v0.BlockManagerV0.fork`), so all
of a group's unfinished sequences sit in the same scheduler queue and, while the prompt is being
computed, share one `num_computed`.  After a recompute preemption only one sequence is left
unfinished (recompute of more is refused), and it is prefilled again with its generated tokens.
"""

from __future__ import annotations

from sim.request import Request, Status


class SeqGroup:
    """One request: its n sequences (forked from one prompt), all in the same queue."""

    __slots__ = ("request_id", "seqs", "prefilling")

    def __init__(self, first: Request):
        self.request_id = first.parent_id
        self.seqs = [first]
        self.prefilling = True        # the prompt (or the recomputed sequence) is not all computed

    def with_status(self, status: Status) -> list[Request]:
        return [s for s in self.seqs if s.status is status]

    @property
    def num_unfinished(self) -> int:
        """vLLM `get_max_num_running_seqs`."""
        return sum(1 for s in self.seqs if s.status is not Status.FINISHED)

    def __repr__(self) -> str:
        return f"SeqGroup({self.request_id}, n={len(self.seqs)})"
