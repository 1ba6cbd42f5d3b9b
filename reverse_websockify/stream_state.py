"""One stream's state machine, seen from one side: credit both ways, OPEN_OK, FIN and RST — pure, no I/O.

The Session keeps one per stream and asks it before every frame it emits or
accepts, so the rules of docs/protocol.md live in one place that tests drive
directly. A stream moves through these states::

    opening --OPEN_OK--> open --FIN sent--> half-closed (local)  --FIN received--> finished
                          \\---FIN received--> half-closed (remote) --FIN sent----/
    any state --RST sent or received--> reset (finished)

``opening`` exists on the server only: it sent OPEN and waits for OPEN_OK.
"""

from __future__ import annotations

from .flow import ReceiveWindow, SentLog
from .protocol import INITIAL_WINDOW, MAX_CREDIT, ProtocolError


class StreamState:
    """Flow control and half-close state of one stream.

    ``send_credit`` is what we may still send; the ReceiveWindow holds what the
    peer may still send us and the credit we owe it.
    """

    __slots__ = ("stream_id", "send_credit", "receive_window", "fin_sent", "fin_received", "is_reset",
                 "open_confirmed", "sent", "sent_log", "acknowledged")

    def __init__(self, stream_id: int, window: int = INITIAL_WINDOW, *, keep_sent: bool = False) -> None:
        self.stream_id = stream_id
        self.send_credit = window
        self.sent = 0  # payload bytes sent in total
        self.sent_log = SentLog() if keep_sent else None  # protocol v2: what a resume may send again
        self.acknowledged = 0  # v2: bytes the peer says it delivered (WINDOW + RELEASE); the log keeps the rest
        self.receive_window = ReceiveWindow(window)
        self.fin_sent = False
        self.fin_received = False
        self.is_reset = False
        self.open_confirmed = False

    @property
    def window(self) -> int:
        return self.receive_window.size

    @property
    def recv_allowance(self) -> int:
        return self.receive_window.allowance

    @property
    def delivered_unreturned(self) -> int:
        return self.receive_window.unreturned

    @property
    def finished(self) -> bool:
        return self.is_reset or (self.fin_sent and self.fin_received)

    @property
    def can_send(self) -> bool:
        """DATA may still go out (credit permitting)."""
        return not (self.fin_sent or self.is_reset)

    def confirm_open(self) -> None:
        """OPEN_OK: sent by the agent once its dial succeeded, received by the server."""
        if self.open_confirmed:
            raise ProtocolError(f"second OPEN_OK on stream {self.stream_id}")
        self.open_confirmed = True

    def reset(self) -> None:
        """RST sent or received: both directions end now."""
        self.is_reset = True

    # -- our sending direction -------------------------------------------------

    def spend(self, size: int) -> None:
        """Account for DATA we are about to send."""
        if self.fin_sent or self.is_reset:
            raise RuntimeError(f"stream {self.stream_id}: DATA after FIN or RST")
        if not 0 < size <= self.send_credit:
            raise RuntimeError(f"stream {self.stream_id}: {size} bytes exceed credit {self.send_credit}")
        self.send_credit -= size
        self.sent += size

    def granted(self, increment: int, *, delivered: bool = True) -> None:
        """The peer sent WINDOW (credit for bytes it delivered) or, in v2, GRANT (``delivered=False``: its
        window grew)."""
        self.send_credit += increment
        if self.send_credit > MAX_CREDIT:
            raise ProtocolError(f"WINDOW on stream {self.stream_id} raises credit above {MAX_CREDIT}")
        if delivered and self.sent_log is not None:
            self._acknowledge(increment)

    def released(self, amount: int) -> None:
        """v2 RELEASE: the peer delivered ``amount`` more bytes and keeps their credit (its window shrank)."""
        if self.sent_log is None:
            raise ProtocolError(f"RELEASE on stream {self.stream_id} of a v1 session")
        self._acknowledge(amount)

    def _acknowledge(self, amount: int) -> None:
        """The peer has delivered ``amount`` more bytes: the log need not keep them for a resume."""
        self.acknowledged += amount
        if self.acknowledged > self.sent:
            raise ProtocolError(f"stream {self.stream_id}: {self.acknowledged} bytes acknowledged of {self.sent} sent")
        assert self.sent_log is not None
        self.sent_log.drop_below(self.acknowledged)

    def send_fin(self) -> None:
        if self.fin_sent:
            raise RuntimeError(f"stream {self.stream_id}: FIN sent twice")
        self.fin_sent = True

    # -- the peer's sending direction ----------------------------------------

    def received(self, size: int) -> None:
        """The peer sent DATA of ``size`` bytes."""
        if self.fin_received:
            raise ProtocolError(f"DATA after FIN on stream {self.stream_id}")
        self.receive_window.received(size, self.stream_id)

    def delivered(self, size: int) -> tuple[int, int]:
        """``size`` received bytes left our process: (WINDOW increment, RELEASE amount) to send now.

        Neither once the peer's FIN came (it will send no more) or the stream was reset.
        """
        return self.receive_window.delivered(size, more_expected=not (self.fin_received or self.is_reset))

    def receive_fin(self) -> None:
        if self.fin_received:
            raise ProtocolError(f"second FIN on stream {self.stream_id}")
        self.fin_received = True
