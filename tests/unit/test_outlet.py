"""Outlet: socket reads wait for the tunnel's writer (streams.py), without sockets."""

from __future__ import annotations

from reverse_websockify.streams import Outlet


class Endpoint:
    def __init__(self) -> None:
        self.resumed = 0

    def start_reading(self) -> None:
        self.resumed += 1


def test_held_streams_read_again_once_the_writer_has_taken_the_frames() -> None:
    wakes: list[int] = []
    outlet = Outlet(lambda: wakes.append(1))
    busy, other = Endpoint(), Endpoint()
    outlet.hold(busy)
    outlet.hold(other)
    assert (busy.resumed, other.resumed) == (0, 0)
    outlet.release()
    assert (busy.resumed, other.resumed) == (1, 1)
    outlet.release()  # each hold is released once
    assert (busy.resumed, other.resumed) == (1, 1)
    outlet.wake()
    assert wakes == [1]
