"""Windows that follow the link (flow.WindowTuner, flow.ReceiveWindow.resize) — pure, no sockets.

The two Sessions back to back in test_session.py run the tuner at random points between frames
(every byte still arrives once); these tests pin the rule itself.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reverse_websockify.flow import ReceiveWindow, WindowTuner

MIB = 1 << 20


def receive(tuner: WindowTuner, stream_id: int, window: ReceiveWindow, size: int) -> None:
    window.received(size, stream_id)
    tuner.saw(stream_id, window, size)


def sample(tuner: WindowTuner, received: dict[int, tuple[ReceiveWindow, int]]) -> dict[int, int]:
    """One round trip during which each stream receives the given number of bytes."""
    tuner.begin_sample()
    for stream_id, (window, size) in received.items():
        receive(tuner, stream_id, window, size)
    return tuner.end_sample()


def test_a_stream_held_back_by_its_window_doubles_it() -> None:
    tuner = WindowTuner(budget=16 * MIB)
    window = ReceiveWindow(MIB)
    assert sample(tuner, {1: (window, MIB)}) == {1: 2 * MIB}  # a whole window in one round trip
    assert window.resize(2 * MIB) == (MIB, 0)  # the growth is credit at once
    assert window.allowance == MIB  # the 1 MiB received is not delivered yet; the growth is usable


def test_a_stream_not_held_back_keeps_its_window() -> None:
    tuner = WindowTuner(budget=16 * MIB)
    window = ReceiveWindow(MIB)
    assert sample(tuner, {1: (window, MIB // 2)}) == {}  # no change
    assert sample(tuner, {}) == {}


def test_growth_stops_at_the_budget() -> None:
    tuner = WindowTuner(budget=3 * MIB)
    window = ReceiveWindow(MIB)
    assert sample(tuner, {1: (window, MIB)}) == {1: 2 * MIB}
    window.delivered(MIB)
    window.resize(2 * MIB)
    assert sample(tuner, {1: (window, 2 * MIB)}) == {1: 3 * MIB}


def test_busy_streams_share_the_budget_equally() -> None:
    tuner = WindowTuner(budget=4 * MIB, minimum=64 * 1024)
    windows = {sid: ReceiveWindow(MIB) for sid in range(1, 9)}
    targets = sample(tuner, {sid: (w, MIB) for sid, w in windows.items()})
    assert targets == {sid: MIB // 2 for sid in windows}  # 8 streams, 4 MiB: half a MiB each
    for sid, window in windows.items():
        window.resize(targets[sid])
    assert sum(targets.values()) <= tuner.budget


def test_the_share_never_goes_below_the_minimum() -> None:
    tuner = WindowTuner(budget=MIB, minimum=64 * 1024)
    windows = {sid: ReceiveWindow(MIB) for sid in range(1, 101)}
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
@given(st.lists(st.tuples(st.integers(1, 12), st.integers(0, 3 * MIB)), min_size=1, max_size=40),
       st.sampled_from([MIB, 4 * MIB, 16 * MIB]))
def test_the_busy_streams_never_get_more_than_the_budget(received: list[tuple[int, int]], budget: int) -> None:
    """Whatever each stream receives in a round trip, the new windows of the busy ones fit the budget
    (unless there are so many that each gets the minimum), and none is below the minimum."""
    tuner = WindowTuner(budget=budget)
    windows: dict[int, ReceiveWindow] = {}
    tuner.begin_sample()
    for stream_id, size in received:
        window = windows.setdefault(stream_id, ReceiveWindow(MIB))
        size = min(size, window.allowance)
        if size:
            receive(tuner, stream_id, window, size)
    targets = tuner.end_sample()
    if targets:
        assert sum(targets.values()) <= max(tuner.budget, tuner.minimum * len(targets))
        assert min(targets.values()) >= tuner.minimum
