"""Flow control of one stream in one direction — pure, no I/O (like h2's ``windows.py``).

The rule: a receiver grants the sender ``size`` bytes of credit up front and
returns credit for received bytes only once they have *left its process*
(written to the local socket and drained), in batches of at least half a
window. So a reader that stops reading stops its own stream and nothing else,
and the bytes buffered for one stream never exceed its window.

The same rule makes resumption cheap (protocol v2): credit coming back proves
the bytes arrived, so a sender keeps only the frames not yet credited back
(``SentLog``) — never more than the window — to send again after a lost link.
"""

from __future__ import annotations

import collections

from .protocol import INITIAL_WINDOW, ProtocolError


class ReceiveWindow:
    """What the peer may still send us on one stream, and the credit owed back to it."""

    __slots__ = ("size", "allowance", "unreturned", "received_bytes")

    def __init__(self, size: int = INITIAL_WINDOW) -> None:
        self.size = size
        self.allowance = size  # bytes the peer may send before it needs more credit
        self.unreturned = 0  # delivered bytes whose credit has not been returned yet
        self.received_bytes = 0  # bytes received in total: the offset the peer resumes from

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

    def delivered(self, nbytes: int, *, more_expected: bool = True) -> int:
        """``nbytes`` left our process; return the WINDOW increment to send now (0: not yet).

        ``more_expected`` is False once the peer sent FIN or the stream was reset: credit it
        could never use is not sent.
        """
        self.unreturned += nbytes
        if not more_expected or self.unreturned < self.size // 2:
            return 0
        increment, self.unreturned = self.unreturned, 0
        self.allowance += increment
        return increment



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
