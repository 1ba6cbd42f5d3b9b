"""Windows that follow the link (flow.WindowTuner, flow.ReceiveWindow.resize) — pure, no sockets.

The two Sessions back to back in test_session.py run the tuner at random points between frames
(every byte still arrives once); these tests pin the rule itself.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reverse_websockify.flow import ReceiveWindow, WindowTuner

MIB = 1 << 20


def opened(tuner: WindowTuner, size: int = MIB) -> ReceiveWindow:
    """A new stream's window, as the session tells the tuner of it."""
    window = ReceiveWindow(size)
    tuner.add(window)
    return window


def apply(tuner: WindowTuner, windows: dict[int, ReceiveWindow], targets: dict[int, int]) -> None:
    """What the session does with new targets."""
    for stream_id, target in targets.items():
        tuner.retarget(windows[stream_id], target)
        windows[stream_id].resize(target)


def receive(tuner: WindowTuner, stream_id: int, window: ReceiveWindow, size: int) -> None:
    window.received(size, stream_id)
    tuner.saw(stream_id, window, size)


def sample(tuner: WindowTuner, received: dict[int, tuple[ReceiveWindow, int]]) -> dict[int, int]:
    """One round trip during which each stream receives the given number of bytes."""
    tuner.begin_sample()
    for stream_id, (window, size) in received.items():
        receive(tuner, stream_id, window, size)
    return tuner.end_sample(0.1)


def test_a_stream_held_back_by_its_window_doubles_it() -> None:
    tuner = WindowTuner(budget=16 * MIB)
    window = ReceiveWindow(MIB)
    assert sample(tuner, {1: (window, MIB)}) == {1: 2 * MIB}  # a whole window in one round trip
    assert window.resize(2 * MIB) == (MIB, 0)  # the growth is credit at once
    assert window.allowance == MIB  # the 1 MiB received is not delivered yet; the growth is usable


def test_queueing_is_not_a_reason_to_grow() -> None:
    """Where the bottleneck is not the window, a larger one only queues bytes ahead of the ping."""
    tuner = WindowTuner(budget=64 * MIB)
    window = ReceiveWindow(MIB)
    tuner.begin_sample()
    receive(tuner, 1, window, MIB)
    assert tuner.end_sample(0.1) == {1: 2 * MIB}  # held back by its window: it grows
    window.delivered(MIB)
    window.resize(2 * MIB)
    tuner.begin_sample()
    receive(tuner, 1, window, 2 * MIB)
    assert tuner.end_sample(0.2) == {}  # the round trip doubled: bytes queue, the window stays
    window.delivered(2 * MIB)
    tuner.begin_sample()
    receive(tuner, 1, window, 2 * MIB)
    assert tuner.end_sample(0.12) == {1: 4 * MIB}  # a short round trip again: the window was the limit
    tuner.new_link()
    assert tuner.min_rtt is None  # another WebSocket, maybe another path


def test_a_stream_not_held_back_keeps_its_window() -> None:
    tuner = WindowTuner(budget=16 * MIB)
    window = ReceiveWindow(MIB)
    assert sample(tuner, {1: (window, MIB // 2)}) == {}  # no change
    assert sample(tuner, {}) == {}


def test_growth_stops_at_what_the_others_leave_of_the_budget() -> None:
    tuner = WindowTuner(budget=4 * MIB)
    window, other = opened(tuner), opened(tuner)
    windows = {1: window, 2: other}
    targets = sample(tuner, {1: (window, MIB)})
    assert targets == {1: 2 * MIB}
    apply(tuner, windows, targets)
    window.delivered(MIB)
    assert sample(tuner, {1: (window, 2 * MIB)}) == {1: 3 * MIB}  # 4 MiB less the other's 1 MiB


def test_busy_streams_share_the_budget_equally() -> None:
    tuner = WindowTuner(budget=4 * MIB, minimum=64 * 1024)
    windows = {sid: opened(tuner) for sid in range(1, 9)}
    targets = sample(tuner, {sid: (w, MIB) for sid, w in windows.items()})
    assert targets == {sid: MIB // 2 for sid in windows}  # 8 streams, 4 MiB: half a MiB each
    apply(tuner, windows, targets)
    assert tuner.total == 4 * MIB


def test_streams_not_sampled_give_their_share_back_at_the_idle_check() -> None:
    """Users paced so that few streams receive in any one round trip: the budget still holds."""
    tuner = WindowTuner(budget=4 * MIB, minimum=64 * 1024)
    windows = {sid: opened(tuner) for sid in range(1, 51)}
    assert tuner.total == 50 * MIB
    for sid, window in windows.items():
        receive(tuner, sid, window, 1000)  # all busy in this period, none sampled
    apply(tuner, windows, tuner.idle(list(windows.items())))
    assert tuner.total <= max(tuner.budget, 50 * tuner.minimum)
    assert {w.target for w in windows.values()} == {tuner.fair_share}


def test_the_share_never_goes_below_the_minimum() -> None:
    tuner = WindowTuner(budget=MIB, minimum=64 * 1024)
    windows = {sid: opened(tuner) for sid in range(1, 101)}
    targets = sample(tuner, {sid: (w, 1000) for sid, w in windows.items()})
    assert set(targets.values()) == {64 * 1024}


def test_a_stalled_stream_does_not_hold_back_a_busy_one() -> None:
    """A stream whose socket stopped draining receives nothing new: it is not in the sample."""
    tuner = WindowTuner(budget=8 * MIB)
    stalled, busy = ReceiveWindow(MIB), ReceiveWindow(MIB)
    receive(tuner, 1, stalled, MIB)  # full, and never delivered
    assert sample(tuner, {2: (busy, MIB)}) == {2: 2 * MIB}


def test_a_shrink_is_taken_from_delivered_bytes_and_announced() -> None:
    window = ReceiveWindow(4 * MIB)
    window.received(4 * MIB, 1)
    assert window.delivered(MIB // 2) == (0, 0)  # below the batch of a quarter window
    assert window.resize(MIB) == (0, MIB // 2)  # back toward 1 MiB: the delivered bytes are kept, not returned
    assert (window.size, window.target) == (3 * MIB + MIB // 2, MIB)
    assert window.delivered(5 * MIB // 2) == (0, 5 * MIB // 2)  # more delivered: the window reaches its target
    assert window.size == MIB and window.allowance == 0
    assert window.delivered(MIB // 4) == (MIB // 4, 0)  # then credit flows again, by quarter windows
    assert window.allowance == MIB // 4


def test_idle_streams_go_back_to_the_initial_window() -> None:
    tuner = WindowTuner(budget=16 * MIB)
    idle, busy = ReceiveWindow(MIB), ReceiveWindow(MIB)
    for window in (idle, busy):
        window.resize(4 * MIB)
    receive(tuner, 1, idle, 1000)
    receive(tuner, 2, busy, 1000)
    streams = [(1, idle), (2, busy)]
    assert tuner.idle(streams) == {}  # both had data during this period
    receive(tuner, 2, busy, 1000)
    assert tuner.idle(streams) == {1: MIB}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3 * MIB)), min_size=1, max_size=60),
       st.sampled_from([MIB, 4 * MIB, 16 * MIB]))
def test_the_windows_never_get_more_than_the_budget(received: list[tuple[int, int]], budget: int) -> None:
    """Whatever the streams receive, round trip after round trip, the targets of all of them together are
    within the budget after every idle check (or each holds only the minimum)."""
    tuner = WindowTuner(budget=budget)
    windows = {sid: opened(tuner) for sid in range(1, 13)}
    apply(tuner, windows, tuner.idle(list(windows.items())))  # 12 new streams may start above the budget
    for start in range(0, len(received), 5):  # five deliveries per round trip
        tuner.begin_sample()
        for stream_id, size in received[start : start + 5]:
            window = windows[stream_id]
            size = min(size, window.allowance)
            if size:
                receive(tuner, stream_id, window, size)
                window.delivered(size)
        apply(tuner, windows, tuner.end_sample(0.1))
        assert tuner.total == sum(w.target for w in windows.values())
        assert min(w.target for w in windows.values()) >= tuner.minimum
        # Between idle checks a busy stream may take its fair share before a quiet one above its
        # share gives it back; at the next check every stream is within its share again.
        assert tuner.total <= tuner.budget + len(windows) * tuner.fair_share
        apply(tuner, windows, tuner.idle(list(windows.items())))
        assert tuner.total <= max(tuner.budget, tuner.minimum * len(windows))


def test_idle_checks_are_needed_only_while_some_window_may_shrink() -> None:
    """A fleet of idle tunnels must cost no timer: the tunnel asks before it schedules an idle check."""
    tuner = WindowTuner(budget=4 * MIB)
    windows = {1: opened(tuner), 2: opened(tuner)}
    assert not tuner.has_idle_work  # every window at the initial size, within the budget
    apply(tuner, windows, {1: 2 * MIB})
    assert tuner.has_idle_work  # one grown: it shrinks back once idle
    apply(tuner, windows, tuner.idle(list(windows.items())))  # both count as idle (no DATA this period)
    apply(tuner, windows, tuner.idle(list(windows.items())))
    assert not tuner.has_idle_work
    for sid in range(3, 8):
        windows[sid] = opened(tuner)
    assert tuner.has_idle_work  # 7 new streams of 1 MiB: above the budget
