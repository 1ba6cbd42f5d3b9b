"""One stream's bookkeeping: credit both ways and the FIN/RST state — pure, no I/O.

The I/O side (streams.py) asks this object before every action, so the rules
of docs/protocol.md are enforced in one place that tests can drive directly.
"""

from __future__ import annotations

from .protocol import INITIAL_WINDOW, MAX_CREDIT, ProtocolError


class StreamState:
    """Flow control and half-close state of one stream, seen from one side.

    ``send_credit`` is what we may still send; ``recv_allowance`` is what the
    peer may still send us. Credit for received bytes goes back to the peer
    only once they were delivered (written out and drained), in batches of at
    least half a window, so a reader that stops reading stops its own stream
    and nothing else.
    """

    __slots__ = (
        "stream_id",
        "window",
        "send_credit",
        "recv_allowance",
        "delivered_unreturned",
        "fin_sent",
        "fin_received",
        "reset",
        "open_confirmed",
    )

    def __init__(self, stream_id: int, window: int = INITIAL_WINDOW) -> None:
        self.stream_id = stream_id
        self.window = window
        self.send_credit = window
        self.recv_allowance = window
        self.delivered_unreturned = 0
        self.fin_sent = False
        self.fin_received = False
        self.reset = False
        self.open_confirmed = False

    @property
    def finished(self) -> bool:
        return self.reset or (self.fin_sent and self.fin_received)

    def confirm_open(self) -> None:
        """OPEN_OK arrived (server side)."""
        if self.open_confirmed:
            raise ProtocolError(f"second OPEN_OK on stream {self.stream_id}")
        self.open_confirmed = True

    # -- our sending direction -------------------------------------------------

    def spend(self, size: int) -> None:
        """Account for DATA we are about to send."""
        if self.fin_sent or self.reset:
            raise RuntimeError(f"stream {self.stream_id}: DATA after FIN or RST")
        if not 0 < size <= self.send_credit:
            raise RuntimeError(f"stream {self.stream_id}: {size} bytes exceed credit {self.send_credit}")
        self.send_credit -= size

    def granted(self, increment: int) -> None:
        """The peer sent WINDOW."""
        self.send_credit += increment
        if self.send_credit > MAX_CREDIT:
            raise ProtocolError(f"WINDOW on stream {self.stream_id} raises credit above {MAX_CREDIT}")

    def send_fin(self) -> None:
        if self.fin_sent:
            raise RuntimeError(f"stream {self.stream_id}: FIN sent twice")
        self.fin_sent = True

    # -- the peer's sending direction ----------------------------------------

    def received(self, size: int) -> None:
        """The peer sent DATA of ``size`` bytes."""
        if self.fin_received:
            raise ProtocolError(f"DATA after FIN on stream {self.stream_id}")
        if size > self.recv_allowance:
            raise ProtocolError(
                f"DATA of {size} bytes on stream {self.stream_id} exceeds the granted credit of {self.recv_allowance}"
            )
        self.recv_allowance -= size

    def delivered(self, size: int) -> int:
        """``size`` received bytes left our process; return the WINDOW increment to send now (0: none yet)."""
        self.delivered_unreturned += size
        if self.fin_received or self.reset or self.delivered_unreturned < self.window // 2:
            return 0
        increment = self.delivered_unreturned
        self.delivered_unreturned = 0
        self.recv_allowance += increment
        return increment

    def receive_fin(self) -> None:
        if self.fin_received:
            raise ProtocolError(f"second FIN on stream {self.stream_id}")
        self.fin_received = True
