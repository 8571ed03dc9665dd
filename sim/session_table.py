"""The rows of a sessions table (`sim.sessions`) as the engine walks them: their send order, the
follow-up links (a user's next turn, sent a think time after its previous one finishes), and the
sessions a chat front-end ends when a turn would no longer fit the model."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, replace

import numpy as np

from sim.requests_table import RequestTable, take


def send_order(arrival_s: np.ndarray, think_s: np.ndarray, user: np.ndarray) -> np.ndarray:
    """The rows (each user's in turn order) in the order they will roughly be sent: by an
    estimated send time, a timed row's arrival, else its user's previous row's estimate plus its
    think time (the turns' own durations left out: every user's take time alike, so the users'
    order holds); stable, so each user's rows keep their order (think times are >= 0) and timed
    rows stay sorted.  A closed loop touches the rows in flight (their segments, the recorder's
    rows) as they are sent: near one another in the table, they lie near one another in memory,
    where a table user by user scattered them over all of it (~0.15 s of a 100k-turn run)."""
    m = arrival_s.shape[0]
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    idx = np.lexsort((np.arange(m), user))                # grouped by user, each user's rows in order
    timed = np.isfinite(arrival_s[idx])
    start = timed.copy()
    start[0] = True
    start[1:] |= user[idx][1:] != user[idx][:-1]          # a user's first row starts a run of estimates
    first = np.maximum.accumulate(np.where(start, np.arange(m), 0))
    acc = np.cumsum(think_s[idx])
    base = np.where(timed, arrival_s[idx], 0.0)
    est = np.empty(m)
    est[idx] = base[first] + (acc - acc[first])
    order = np.lexsort((np.arange(m), est))
    # a user whose later session is timed before its earlier one's estimated end (no generator
    # makes one: a user's first row is its only timed one) keeps the places its rows got, filled
    # in its own order: a follow-up must come after the row it follows
    fixed = np.empty(m, dtype=np.int64)
    fixed[np.lexsort((np.arange(m), user[order]))] = idx
    return fixed


def in_send_order(t: RequestTable) -> RequestTable:
    """`t` with its rows in `send_order`."""
    return take(t, send_order(t.arrival_s, t.extra["think_s"], t.extra["user"]))


def _followers(table: RequestTable) -> np.ndarray:
    """`follow_up_rows` as an int64 array."""
    user = table.extra["user"]
    m = len(table)
    nxt = np.full(m, -1, dtype=np.int64)
    if m > 1:
        idx = np.lexsort((np.arange(m), user))            # grouped by user, each user's rows in order
        after = (user[idx][1:] == user[idx][:-1]) & np.isnan(table.arrival_s[idx][1:])
        nxt[idx[:-1][after]] = idx[1:][after]
    return nxt


def follow_up_rows(table: RequestTable) -> list[int]:
    """For each row, the row sent `think_s` after it finishes (-1: none): the user's next row,
    when the engine decides its arrival."""
    return _followers(table).tolist()


def follow_up_links(table: RequestTable) -> tuple[array[int], array[float]]:
    """Per row, the row sent after it finishes (`follow_up_rows`, -1: none) and the think time
    before that send (0.0: none), as typed arrays: what `sim.follow_ups.FollowUps` reads at a
    finished row (a closed loop finishes rows in no table order: an item of a list would be a
    boxed int or float apart from the list, a cold object each)."""
    after = _followers(table)
    think_after = np.where(after >= 0, table.extra["think_s"][np.maximum(after, 0)], 0.0).astype(np.float64)
    return array("q", after.tobytes()), array("d", think_after.tobytes())


@dataclass(frozen=True, slots=True)
class TurnLinks:
    """Per row, the row of its session's previous turn (-1: its first turn), and whether its
    session has a next turn: the engine hands a turn's block-hash chain on to the next one
    (`sim.block_hash.request_chain`), whose segments it heads."""

    previous: list[int]
    has_next: list[bool]


def turn_links(table: RequestTable) -> TurnLinks:
    """The `TurnLinks` of a sessions table (rows in any order)."""
    sess = table.extra["session"]
    turn = table.extra["turn"]
    m = len(table)
    prev = np.full(m, -1, dtype=np.int64)
    has_next = np.zeros(m, dtype=bool)
    if m > 1:
        idx = np.lexsort((turn, sess))                    # grouped by session, turns in order
        link = (sess[idx][1:] == sess[idx][:-1]) & (turn[idx][1:] == turn[idx][:-1] + 1)
        prev[idx[1:][link]] = idx[:-1][link]
        has_next[idx[:-1][link]] = True
    return TurnLinks(prev.tolist(), has_next.tolist())


def end_long_sessions(table: RequestTable, limit_tokens: int) -> tuple[RequestTable, int]:
    """Drop each session's turns from the first whose prompt + answer exceeds `limit_tokens` on
    (the session ends there); (table, number of sessions ended early).  A session ended at its
    first turn is dropped whole; if it opened a user's chain, the user's next session opens it."""
    if "session" not in table.extra or len(table) == 0:
        return table, 0
    sess = table.extra["session"]
    over = table.prompt_tokens + table.output_tokens > limit_tokens
    if not over.any():
        return table, 0
    ended = np.unique(sess[over])
    first_over = {int(s): int(np.flatnonzero(over & (sess == s))[0]) for s in ended.tolist()}
    keep = np.ones(len(table), dtype=bool)
    for s, row in first_over.items():
        keep[row:][sess[row:] == s] = False
    arrival = table.arrival_s.copy()
    user = table.extra["user"]
    handed = False
    for row in first_over.values():    # a dropped timed opener hands its start to the user's next row
        if table.extra["turn"][row] == 0 and not math.isnan(arrival[row]):
            later = np.flatnonzero(keep & (user == user[row]) & (np.arange(len(table)) > row))
            if later.size:
                arrival[later[0]] = arrival[row]
                handed = True
    kept = take(replace(table, arrival_s=arrival), np.flatnonzero(keep))
    return (in_send_order(kept) if handed else kept), int(ended.size)   # a handed start moves its row up
