"""The v1 scheduler's waiting queue under `scheduling_policy: priority` (the FCFS policy uses a
deque)."""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from sim.request import Request


class PriorityWaiting:
    """vLLM's `PriorityRequestQueue` (vllm/v1/core/sched/request_queue.py): a heap ordered by
    (priority, arrival time, id) — lower priority values first; a preempted request goes back
    by its key, not to the front.  vLLM breaks (priority, arrival) ties by the request-id
    *string*; pagesim by its integer id (only exact arrival-time ties can differ).  Offers the
    deque operations the scheduler uses."""

    def __init__(self) -> None:
        self.heap: list[tuple[int, float, int, Request]] = []

    def append(self, r: Request) -> None:
        heapq.heappush(self.heap, (r.priority, r.arrival_s, r.req_id, r))

    def appendleft(self, r: Request) -> None:
        heapq.heappush(self.heap, (r.priority, r.arrival_s, r.req_id, r))

    def popleft(self) -> Request:
        return heapq.heappop(self.heap)[3]

    def __getitem__(self, i: int) -> Request:
        if i != 0:
            raise IndexError("only the head of a priority queue can be read")
        return self.heap[0][3]

    def __len__(self) -> int:
        return len(self.heap)

    def __bool__(self) -> bool:
        return bool(self.heap)

    def __iter__(self) -> Iterator[Request]:
        return iter([e[3] for e in sorted(self.heap, key=lambda e: e[:3])])

    def remove(self, r: Request) -> None:
        self.heap = [e for e in self.heap if e[3] is not r]
        heapq.heapify(self.heap)
