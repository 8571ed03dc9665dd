"""sim.session_table: a sessions table's send order, follow-up links and sessions ended early, by hand."""

from __future__ import annotations

import numpy as np

from sim.requests_table import RequestTable
from sim.session_table import end_long_sessions, follow_up_links, follow_up_rows, send_order, turn_links

NAN = float("nan")


def test_send_order_by_hand() -> None:
    # user 0 opens at 0 s and thinks 1 s, then 1.5 s (estimates 0, 1, 2.5); user 1 opens at
    # 1.5 s and thinks 0.5 s twice (1.5, 2, 2.5): the tie at 2.5 s goes to the earlier row
    arrival = np.array([0.0, NAN, NAN, 1.5, NAN, NAN])
    think = np.array([0.0, 1.0, 1.5, 0.0, 0.5, 0.5])
    user = np.array([0, 0, 0, 1, 1, 1])
    assert send_order(arrival, think, user).tolist() == [0, 1, 3, 4, 2, 5]
    # user 0 with a second timed session at 1.2 s, before its first one's last turn is due
    # (2.5 s): estimates 0, 1, 2.5, 1.2, 1.7 and user 1 at 1.5 sort as rows 0 1 3 5 4 2; user
    # 0's places (0 1 2 4 5) are filled with its rows in order: no turn before its predecessor
    arrival2 = np.array([0.0, NAN, NAN, 1.2, NAN, 1.5])
    user2 = np.array([0, 0, 0, 0, 0, 1])
    assert send_order(arrival2, think, user2).tolist() == [0, 1, 2, 5, 3, 4]
    assert send_order(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)).tolist() == []


def _table(arrival: list[float], prompt: list[int], think: list[float], user: list[int],
           session: list[int], turn: list[int]) -> RequestTable:
    m = len(arrival)
    return RequestTable(np.array(arrival), np.array(prompt), np.full(m, 10),
                        extra={"think_s": np.array(think), "user": np.array(user),
                               "session": np.array(session), "turn": np.array(turn)})


def test_follow_ups_are_each_users_next_untimed_row_wherever_it_lies() -> None:
    # rows interleaved by send order: u0 s0 t0, u1 s1 t0, u0 s0 t1, u1 s1 t1, u0 s2 t0 (timed:
    # a session with its own start is nobody's follow-up), u0 s2 t1
    t = _table([0.0, 0.5, NAN, NAN, 9.0, NAN], [5] * 6, [0, 0, 1, 1, 0, 1],
               [0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 2, 2], [0, 0, 1, 1, 0, 1])
    assert follow_up_rows(t) == [2, 3, -1, -1, 5, -1]
    after, think = follow_up_links(t)      # each row's follower, and the think time before it
    assert after.tolist() == [2, 3, -1, -1, 5, -1] and think.tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_turn_links_join_each_sessions_turns_not_a_users_sessions() -> None:
    # the same rows: each session's turn 1 is headed by its turn 0; user 0's session 2 (rows 4, 5)
    # comes after session 0 (rows 0, 2) but resends none of it: only a session's own turns link
    t = _table([0.0, 0.5, NAN, NAN, 9.0, NAN], [5] * 6, [0, 0, 1, 1, 0, 1],
               [0, 1, 0, 1, 0, 0], [0, 1, 0, 1, 2, 2], [0, 0, 1, 1, 0, 1])
    links = turn_links(t)
    assert links.previous == [-1, -1, 0, 1, -1, 4]
    assert links.has_next == [True, True, False, False, True, False]
    # a session whose turn 1 was dropped: turn 2 has no previous turn to resume from
    gap = _table([0.0, NAN, NAN], [5] * 3, [0, 1, 1], [0, 0, 0], [0, 0, 0], [0, 2, 3])
    assert turn_links(gap).previous == [-1, -1, 1] and turn_links(gap).has_next == [False, True, False]


def test_a_dropped_opener_hands_its_start_on_and_the_row_moves_up() -> None:
    # user 0's first session (one turn, 500 tokens) no longer fits and is dropped; its start (0 s)
    # goes to the user's next session, whose opener was a follow-up estimated at 5 s, sorted after
    # user 1's session (2 s, 3 s).  Kept in that order the timed arrivals would read 2, 0: the
    # table is re-ordered, and the follow-up links follow
    t = _table([0.0, 2.0, NAN, NAN, NAN], [500, 5, 5, 5, 5], [0, 2, 1, 5, 1],
               [0, 1, 1, 0, 0], [0, 2, 2, 1, 1], [0, 0, 1, 0, 1])
    kept, ended = end_long_sessions(t, 100)
    assert ended == 1
    kept.check()
    assert kept.extra["session"].tolist() == [1, 1, 2, 2] and kept.extra["turn"].tolist() == [0, 1, 0, 1]
    assert kept.arrival_s[[0, 2]].tolist() == [0.0, 2.0] and np.isnan(kept.arrival_s[[1, 3]]).all()
    assert follow_up_rows(kept) == [1, -1, 3, -1]
