"""The decode set of `sim.scheduler_v1.SchedulerV1`: requests that decode one token per step,
whose counters are implicit in the step clock (`computed = base_computed + clock - base_clock`,
`output = base_output + upd - base_upd`), and the calendars keyed by clock value that say when a
member needs its next block (`alloc_due`) or finishes (`finish_due`, `finish_keys`).  A request
joins when it starts decoding and leaves (its counters written back, made explicit) before any
step that would give it other than one token.  Calendar entries carry the request's `version`
at the time: leaving bumps it, so stale entries are skipped instead of searched for and removed.
Functions of the scheduler, as `sim.scheduler_spec` / `sim.scheduler_quiet` are.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from sim.request import Request

if TYPE_CHECKING:
    from sim.scheduler_v1 import SchedulerV1


def take(cal: dict[int, list[tuple[Request, int]]], key: int) -> list[tuple[Request, int]] | None:
    """Remove and return the calendar's entries at `key` (None: none).  `cal.pop(key, None)`,
    which compiled is a generic method call; `get` and `del` are C calls."""
    lst = cal.get(key)
    if lst is not None:
        del cal[key]
    return lst


def push(cal: dict[int, list[tuple[Request, int]]], key: int, req: Request) -> None:
    lst = cal.get(key)
    if lst is None:
        cal[key] = [(req, req.version)]
    else:
        lst.append((req, req.version))


def extend(cal: dict[int, list[tuple[Request, int]]], key: int, reqs: list[Request]) -> None:
    lst = cal.get(key)
    if lst is None:
        cal[key] = [(r, r.version) for r in reqs]
    else:
        lst.extend((r, r.version) for r in reqs)


def push_finish(s: SchedulerV1, key: int, r: Request) -> None:
    if key not in s.finish_due:
        heapq.heappush(s.finish_keys, key)
    push(s.finish_due, key, r)


def join(s: SchedulerV1, r: Request) -> None:
    """Take a request that decodes one token per step into the decode set."""
    c = s.clock
    in_flight = r.ph if s.limits.async_scheduling else 1
    r.base_computed = r.num_computed
    r.base_clock = c
    r.base_output = r.num_output + in_flight
    r.base_upd = c
    r.join_clock = c
    r.in_decode_set = True
    del s.explicit[r.req_id]
    if s.lanes_on:
        s.lane_of[r.req_id] = s.lane
    s.num_members += 1
    s.members_base += r.base_computed - c
    push(s.alloc_due, c + r.nblocks * s.kv.block_size - r.base_computed, r)
    push_finish(s, c + r.max_tokens - r.base_output, r)


def leave(s: SchedulerV1, r: Request) -> None:
    """Make a member's counters explicit and take it out of the decode set."""
    r.num_computed = r.base_computed + s.clock - r.base_clock
    r.num_output = r.base_output + s.upd - r.base_upd
    if s.limits.async_scheduling:
        r.ph = s.clock - s.upd
        cached = r.num_prompt_tokens + r.num_output - 1   # num_computed - placeholders at the last update
    else:
        r.ph = 0
        cached = r.num_computed                           # min(computed + new, num_tokens) at the last step
    if s.kv.enable_caching:
        s.kv.cache_blocks(r, cached)
    r.last_token_s = s.last_update_s
    r.in_decode_set = False
    r.leave_clock = s.clock
    if s.lanes_on:
        del s.lane_of[r.req_id]
    r.version += 1
    s.num_members -= 1
    s.members_base -= r.base_computed - r.base_clock
    s.explicit[r.req_id] = r


def sync(s: SchedulerV1) -> None:
    """Write the implicit counters of decode-set members into the objects (tests, traces)."""
    for r in s.running_map.values():
        if r.in_decode_set:
            clock, upd = s.clock, s.upd
            if s.lanes_on:
                lane = s.lane_of[r.req_id]
                clock, upd = lane.clock, lane.upd
            r.num_computed = r.base_computed + clock - r.base_clock
            r.num_output = r.base_output + upd - r.base_upd
            r.ph = clock - upd
