"""Flow control of one stream in one direction — pure, no I/O (like h2's ``windows.py``).

The rule: a receiver grants the sender ``size`` bytes of credit up front and
returns credit for received bytes only once they have *left its process*
(written to the local socket and drained), in batches of at least half a
window. So a reader that stops reading stops its own stream and nothing else,
and the bytes buffered for one stream never exceed its window.

The same rule makes resumption cheap (protocol v2): credit coming back proves
the bytes arrived, so a sender keeps only the frames not yet credited back
(``SentLog``) — never more than the window — to send again after a lost link;
a pong that proves the peer received them lets them go sooner (Session.flow_sample_end).
"""

from __future__ import annotations

import collections
from typing import Iterable

from .protocol import INITIAL_WINDOW, ProtocolError


RETURN_SHIFT = 2
"""Credit goes back once a quarter of the window (size >> 2) is delivered: a WINDOW is then always on
its way to a sender that runs out of credit, and a sender on a long link keeps 7/8 of the window in
flight on average rather than 3/4 with half-window batches (measured, 200 Mbit/s at 300 ms with a
16 MiB budget: 90 % of direct against 50-86 %)."""


class ReceiveWindow:
    """What the peer may still send us on one stream, and the credit owed back to it.

    The window's ``size`` is not fixed: ``resize`` raises it at once (the growth is
    credit the peer may use now: GRANT in v2, WINDOW in v1) or lowers its target, which
    is reached as bytes are delivered — their credit is kept instead of returned (RELEASE
    in v2, nothing in v1) — so the peer never has more in flight than the current size.
    """

    __slots__ = ("size", "target", "allowance", "unreturned", "unreleased", "received_bytes", "sample_start",
                 "active_epoch")

    def __init__(self, size: int = INITIAL_WINDOW) -> None:
        self.size = size
        self.target = size  # the size the window moves toward (WindowTuner)
        self.allowance = size  # bytes the peer may send before it needs more credit
        self.unreturned = 0  # delivered bytes whose credit has not been returned yet
        self.unreleased = 0  # bytes the window shrank by that the peer has not been told of (RELEASE)
        self.received_bytes = 0  # bytes received in total: the offset the peer resumes from
        self.sample_start = 0  # received_bytes when the current rate sample began (WindowTuner)
        self.active_epoch = 0  # the WindowTuner's idle-check period in which DATA last arrived

    @property
    def limit(self) -> int:
        """The credit granted in total: the peer may have sent up to this many bytes."""
        return self.received_bytes + self.allowance

    def received(self, nbytes: int, stream_id: int) -> None:
        """The peer sent DATA of ``nbytes``: it must fit in the credit we granted."""
        if nbytes > self.allowance:
            raise ProtocolError(
                f"DATA of {nbytes} bytes on stream {stream_id} exceeds the granted credit of {self.allowance}"
            )
        self.allowance -= nbytes
        self.received_bytes += nbytes

    def delivered(self, nbytes: int, *, more_expected: bool = True) -> tuple[int, int]:
        """``nbytes`` left our process: (WINDOW increment, RELEASE amount) to send now, 0 for none.

        Credit goes back in batches of a quarter of the window (RETURN_SHIFT); while the window is above
        its target, delivered bytes shrink it instead. ``more_expected`` is False once the
        peer sent FIN or the stream was reset: credit it could never use is not sent.
        """
        self.unreturned += nbytes
        if not more_expected:
            return 0, 0
        excess = self.size - self.target
        if excess > 0:
            shrink = min(excess, self.unreturned)
            self.size -= shrink
            self.unreturned -= shrink
            self.unreleased += shrink
        batch = max(self.size >> RETURN_SHIFT, 1)
        if self.unreturned < batch:
            if self.unreleased >= batch:
                released, self.unreleased = self.unreleased, 0
                return 0, released
            return 0, 0
        increment, self.unreturned = self.unreturned, 0
        released, self.unreleased = self.unreleased, 0
        self.allowance += increment
        return increment, released

    def resize(self, target: int) -> tuple[int, int]:
        """Move the window toward ``target``: (growth granted now, shrink to announce now).

        Growth is credit at once. A shrink takes what was delivered and not yet returned
        now, and the rest as further bytes are delivered (``delivered``).
        """
        self.target = target
        change = target - self.size
        if change > 0:
            self.size = target
            self.allowance += change
            return change, 0
        shrink = min(-change, self.unreturned)
        self.size -= shrink
        self.unreturned -= shrink
        released, self.unreleased = self.unreleased + shrink, 0
        return 0, released


class SentLog:
    """DATA frames sent on one stream and not yet credited back: what a resume may have to send again.

    Credit comes back only for bytes the peer has delivered, so every frame
    below the credited offset has arrived and is dropped; what is kept is
    bounded by the window.
    """

    __slots__ = ("frames", "start")

    def __init__(self) -> None:
        self.frames: collections.deque[tuple[int, int, bytes]] = collections.deque()  # (offset, size, frame)
        self.start = 0  # the offset of the first byte kept

    def keep(self, offset: int, size: int, frame: bytes) -> None:
        self.frames.append((offset, size, frame))

    def drop_below(self, offset: int) -> None:
        """The peer has received everything before ``offset``."""
        frames = self.frames
        while frames and frames[0][0] + frames[0][1] <= offset:
            frames.popleft()
        self.start = max(self.start, offset)

    def since(self, offset: int) -> list[tuple[int, bytes]]:
        """(bytes to skip, frame) for every kept frame that holds bytes from ``offset`` on."""
        if offset < self.start:
            raise ValueError(f"bytes from {offset} were dropped (kept from {self.start})")
        return [(max(0, offset - start), frame) for start, size, frame in self.frames if start + size > offset]

    @property
    def kept_bytes(self) -> int:
        return sum(size for _, size, _ in self.frames)


MIN_WINDOW = 64 * 1024
"""The smallest window the tuner gives a busy stream, however many share the budget."""
DEFAULT_BUDGET = 16 * 1024 * 1024
"""Bytes all streams of one tunnel may have in flight toward us: 1.1 x the bandwidth-delay product of
200 Mbit/s at 300 ms (7.5 MB), for 90 % of such a link with one stream."""
QUEUE_FACTOR = 1.5
"""A window grows only in a sample whose round trip is within this factor of the shortest one seen on
the link. Where the bottleneck is not the window (the CPU, a slow reader), a larger window only
queues more bytes ahead of the ping (bufferbloat): the round trip grows and the window does not."""
IDLE_SECONDS = 1.0
"""A stream that received nothing for this long goes back to the initial window."""


class WindowTuner:
    """The receive windows of one tunnel's streams: grown to the link's bandwidth-delay product, under a budget.

    The rule, after gRPC's BDP estimation, per stream: a *sample* counts what each stream
    receives during one round trip (a WebSocket ping and its pong, which queue behind the
    data like the credit does). A stream that received at least 2/3 of its window in that
    time is held back by it — unless the round trip was long because bytes queued ahead of the
    ping (``QUEUE_FACTOR``): then a larger window would only queue more — and its window becomes
    twice what it received — within what the other streams leave of the budget, and never
    less than an equal share of it (``fair_share``, at least ``MIN_WINDOW``). A stream idle for
    ``IDLE_SECONDS`` goes back to the initial window, and while the windows together exceed the
    budget (many new streams, each starting with the protocol's 1 MiB), every stream above its
    share goes down to it. So no stream starves while another is busy, and a stalled stream (its
    socket not draining) holds at most its own window, never the others'.

    Windows are what the peer may have in flight toward us, so the budget bounds what both
    sides hold for this tunnel: our unsent socket writes and the peer's kept frames (SentLog).
    """

    __slots__ = ("budget", "initial", "minimum", "sampling", "active", "epoch", "dirty", "min_rtt", "total", "streams")

    def __init__(self, budget: int = DEFAULT_BUDGET, initial: int = INITIAL_WINDOW, minimum: int = MIN_WINDOW) -> None:
        self.initial = min(initial, budget)
        self.minimum = min(minimum, self.initial)
        self.budget = max(budget, self.minimum)
        self.sampling = False
        self.active: dict[int, ReceiveWindow] = {}  # streams that received DATA during the sample
        self.epoch = 0  # idle checks so far
        self.min_rtt: float | None = None  # the shortest round trip sampled on this link, seconds
        self.total = 0  # the targets of all streams, together: what the budget bounds
        self.streams = 0
        self.dirty = False  # DATA arrived since the last sample began: worth another one

    # the session tells the tuner of every stream's birth, death and new target

    def add(self, window: ReceiveWindow) -> None:
        self.total += window.target
        self.streams += 1

    def remove(self, window: ReceiveWindow) -> None:
        self.total -= window.target
        self.streams -= 1

    def retarget(self, window: ReceiveWindow, target: int) -> None:
        self.total += target - window.target

    def clear(self) -> None:
        self.total = self.streams = 0

    @property
    def has_idle_work(self) -> bool:
        """Some window is above the initial one, or all together above the budget: idle checks may shrink them."""
        return self.total > self.initial * self.streams or self.total > self.budget

    @property
    def fair_share(self) -> int:
        """Every stream's part of the budget when all want more than there is."""
        return max(self.minimum, self.budget // max(self.streams, 1))

    def saw(self, stream_id: int, window: ReceiveWindow, size: int) -> None:
        """DATA of ``size`` arrived on ``stream_id`` (already counted in ``window``)."""
        self.dirty = True
        window.active_epoch = self.epoch
        if self.sampling and stream_id not in self.active:
            self.active[stream_id] = window
            window.sample_start = window.received_bytes - size

    def begin_sample(self) -> None:
        self.sampling = True
        self.dirty = False
        self.active = {}

    def end_sample(self, rtt: float) -> dict[int, int]:
        """The round trip of ``rtt`` seconds is over: the new target of every stream busy during it."""
        self.sampling = False
        active, self.active = self.active, {}
        if not active:
            return {}
        self.min_rtt = rtt if self.min_rtt is None else min(self.min_rtt, rtt)
        queue_free = rtt <= QUEUE_FACTOR * self.min_rtt
        fair, total = self.fair_share, self.total
        wanted = {}
        for stream_id, window in active.items():
            got = window.received_bytes - window.sample_start
            want = window.target
            if queue_free and 3 * got >= 2 * window.size:
                want = max(want, 2 * got)
            # What the other streams do not hold, but at least a fair share: over the budget, the
            # busy streams shrink to their share; under it, one may take what the others leave.
            want = min(want, max(fair, self.budget - (total - window.target)))
            if want != window.target:
                wanted[stream_id] = want
                total += want - window.target
        return wanted

    def new_link(self) -> None:
        """A new WebSocket, maybe another path: its round trip is measured afresh."""
        self.min_rtt = None
        self.sampling = False

    def idle(self, windows: Iterable[tuple[int, ReceiveWindow]]) -> dict[int, int]:
        """Every ``IDLE_SECONDS``: streams that received nothing since the last call go back to the initial
        window, and while all windows together exceed the budget (many new streams), every stream above
        its fair share goes down to it."""
        epoch = self.epoch
        self.epoch += 1
        fair, over = self.fair_share, self.total > self.budget
        targets = {}
        for stream_id, window in windows:
            target = window.target
            if window.active_epoch < epoch and target > self.initial:
                target = self.initial
            if over and target > fair:
                target = fair  # streams that were not sampled give their share back too
            if target != window.target:
                targets[stream_id] = target
        return targets
