"""Pipeline parallelism in the v1 scheduler (`sim.scheduler_v1.SchedulerV1`): lanes.

With p batches in flight, the requests of one batch get their tokens back together and are
scheduled together again (vLLM: a request in flight is not rescheduled), so each cohort is a sync
decode set that steps once per batch of its own: a `Lane`.  The scheduler keeps one lane loaded
in its decode-set fields; these functions save it, load another, choose the lane to schedule, and
let a member of a lane in flight leave.  Followed: vLLM 0.32 vllm/v1/engine/core.py
`step_with_batch_queue` with the synchronous scheduler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.decode_set import leave
from sim.request import Request

if TYPE_CHECKING:
    from sim.scheduler_v1 import SchedulerV1


class Lane:
    """Pipeline parallelism: one cohort's decode set with its own step clock.  With p batches in
    flight, the requests of one batch get their tokens back together and are scheduled together
    again (vLLM: a request in flight is not rescheduled), so each cohort is a sync decode set that
    steps once per batch of its own.  The scheduler loads a lane into its decode-set fields to
    schedule or apply that lane's batch and saves it back after."""

    __slots__ = ("clock", "upd", "num_members", "members_base", "alloc_due", "finish_due", "finish_keys",
                 "last_update_s")

    def __init__(self) -> None:
        self.clock = 0
        self.upd = 0
        self.num_members = 0
        self.members_base = 0
        self.alloc_due: dict[int, list[tuple[Request, int]]] = {}
        self.finish_due: dict[int, list[tuple[Request, int]]] = {}
        self.finish_keys: list[int] = []
        self.last_update_s = 0.0


def save_lane(s: SchedulerV1, lane: Lane) -> None:
    lane.clock = s.clock
    lane.upd = s.upd
    lane.num_members = s.num_members
    lane.members_base = s.members_base
    lane.alloc_due = s.alloc_due
    lane.finish_due = s.finish_due
    lane.finish_keys = s.finish_keys
    lane.last_update_s = s.last_update_s


def load_lane(s: SchedulerV1, lane: Lane) -> None:
    s.lane = lane
    s.clock = lane.clock
    s.upd = lane.upd
    s.num_members = lane.num_members
    s.members_base = lane.members_base
    s.alloc_due = lane.alloc_due
    s.finish_due = lane.finish_due
    s.finish_keys = lane.finish_keys
    s.last_update_s = lane.last_update_s


def load_ready_lane(s: SchedulerV1) -> None:
    """The lane to schedule: the applied one (a new one if none); should several be ready,
    the largest stays and the others' members leave to be scheduled explicitly."""
    ready = s.ready_lanes
    lane = Lane()
    if ready:
        lane = ready[0]
        for other in ready:
            if other.num_members > lane.num_members:
                lane = other
        for other in ready:
            if other is not lane:
                load_lane(s, other)
                for r in list(s.running_map.values()):
                    if r.in_decode_set and s.lane_of[r.req_id] is other:
                        leave(s, r)
        s.ready_lanes = []
    load_lane(s, lane)


def leave_other_lane(s: SchedulerV1, r: Request, other: Lane) -> None:
    """A member of a lane in flight leaves (preempted while the current lane is loaded).  One
    that joined in the batch in flight has that token still to come: its last token time stays."""
    joined_in_flight = False
    for b, lane in s.lane_inflight:
        if lane is other and r in b.samplers:
            joined_in_flight = True
    last_token_s = r.last_token_s
    cur = s.lane
    save_lane(s, cur)
    load_lane(s, other)
    leave(s, r)
    if joined_in_flight:
        r.last_token_s = last_token_s
    save_lane(s, other)
    load_lane(s, cur)
