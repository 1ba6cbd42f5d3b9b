"""Flow control of one stream in one direction — pure, no I/O (like h2's ``windows.py``).

The rule: a receiver grants the sender ``size`` bytes of credit up front and
returns credit for received bytes only once they have *left its process*
(written to the local socket and drained), in batches of at least half a
window. So a reader that stops reading stops its own stream and nothing else,
and the bytes buffered for one stream never exceed its window.
"""

from __future__ import annotations

from .protocol import INITIAL_WINDOW, ProtocolError


class ReceiveWindow:
    """What the peer may still send us on one stream, and the credit owed back to it."""

    __slots__ = ("size", "allowance", "unreturned")

    def __init__(self, size: int = INITIAL_WINDOW) -> None:
        self.size = size
        self.allowance = size  # bytes the peer may send before it needs more credit
        self.unreturned = 0  # delivered bytes whose credit has not been returned yet

    def received(self, nbytes: int, stream_id: int) -> None:
        """The peer sent DATA of ``nbytes``: it must fit in the credit we granted."""
        if nbytes > self.allowance:
            raise ProtocolError(
                f"DATA of {nbytes} bytes on stream {stream_id} exceeds the granted credit of {self.allowance}"
            )
        self.allowance -= nbytes

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

