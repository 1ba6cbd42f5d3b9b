"""The asyncio side of one stream: a TCP socket pumped to and from the session.

``StreamEndpoint`` is the part both programs share; ``user_side.py`` (the
server: a user's connection) and ``service_side.py`` (the agent: the
connection it dials to its service) add what only one role does.

It is an asyncio BufferedProtocol so that reading is driven by credit: the
buffer offered to the kernel is never larger than the credit left, and
reading pauses at zero credit, which is what bounds memory per stream. Every
frame goes through the Session (which checks and encodes it); the ``Outlet``
wakes the tunnel's writer when the session has frames to send, and holds a
socket's reading back while the writer is behind.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import Callable

from .logfields import fields
from .protocol import MAX_DATA
from .reasons import StreamFailure
from .session import Session

log = logging.getLogger("reverse_websockify.stream")

Wake = Callable[[], None]
"""Tells the tunnel's writer that the session has frames queued."""

WRITER_BACKLOG = MAX_DATA
"""Bytes read from sockets that may wait for the tunnel's writer before further reads wait with them."""


class Outlet:
    """The tunnel's writer as the streams see it: wake it when frames are queued; read no faster than it writes.

    uvloop (libuv) reads a readable socket up to 32 times in one poll before any task runs, and
    asyncio reads every ready socket before the writer's turn. Each read becomes a DATA frame in the
    session, so a bulk stream piled up megabytes before the writer took them in one burst; reading
    and writing then took turns instead of overlapping, and on uvloop one stream got half of plain
    asyncio's throughput with neither process busy. A stream whose read leaves more than
    ``WRITER_BACKLOG`` bytes queued stops reading until the writer has taken them (``release``, called by the
    writer each time it takes the session's frames): the writer runs after every second full read,
    and what waits in user space stays at about one frame per busy stream. Reads of small requests
    never reach the mark, so connection rates and latency do not pay for it.
    """

    __slots__ = ("wake", "_held")

    def __init__(self, wake: Wake) -> None:
        self.wake = wake
        self._held: list[StreamEndpoint] = []

    def hold(self, endpoint: StreamEndpoint) -> None:
        """``endpoint`` paused its reading for the writer: resume it at the next ``release``."""
        self._held.append(endpoint)

    def release(self) -> None:
        """The writer took the queued frames: the held streams read again (those that still can)."""
        if self._held:
            held, self._held = self._held, []
            for endpoint in held:
                endpoint.start_reading()

# One read buffer for the whole process: get_buffer() and buffer_updated()
# run back to back in one event-loop callback, so streams never share it at
# the same time, and a stream costs no buffer memory while idle.
_READ_VIEW = memoryview(bytearray(MAX_DATA))
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN
READ_AHEAD = 64 * 1024  # the most one read may take while a stream cannot send


def peer_name(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")


def reset_connection(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP reset, so that a cut-short stream never looks complete to its peer."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


class StreamEndpoint(asyncio.BufferedProtocol):
    """One stream's socket: reads become DATA within credit, DATA is written and credited back once drained."""

    transport: asyncio.Transport  # user side: given; service side: set when the dial connects

    def __init__(self, session: Session, stream_id: int, outlet: Outlet, service_id: str, peer: str = "") -> None:
        self.session = session
        self.stream_id = stream_id
        self.state = session.streams[stream_id]  # read for credit on every socket read; the session writes it
        self.outlet = outlet
        self.wake = outlet.wake
        self.service_id = service_id
        self.peer = peer
        self.bytes_read = 0  # socket -> tunnel
        self.bytes_written = 0  # tunnel -> socket
        self._unsent = bytearray()  # read from the socket while we could not send it yet
        self._eof_unsent = False  # the socket's EOF came after _unsent; FIN follows it
        self._writing_paused = False
        self._held = 0  # bytes given to the transport while it was above its high-water mark
        self.ended = False

    def describe(self) -> str:
        return f"service {self.service_id} stream {self.stream_id}"

    # -- the socket -> the tunnel ----------------------------------------------------

    def start_reading(self) -> None:
        """Send what was read ahead (see buffer_updated), then read the socket while there is credit."""
        state, transport = self.state, self.transport
        if self.ended or not state.can_send or transport.is_closing():
            return
        if self._unsent:
            self._send_unsent()
        if self._unsent or state.send_credit == 0:
            return
        if self._eof_unsent:
            self._eof_unsent = False
            self._send_fin()
        else:
            transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        credit = self.state.send_credit if not self._unsent else 0
        # Normally the buffer is exactly the credit left, so a read can never overrun it. A read
        # while we cannot send (no credit: uvloop may finish a read it started before
        # pause_reading) is kept in _unsent, bounded by READ_AHEAD.
        return _READ_VIEW[: min(credit, MAX_DATA) if credit > 0 else READ_AHEAD]

    def buffer_updated(self, nbytes: int) -> None:
        state = self.state
        if self._unsent or nbytes > state.send_credit:
            self._unsent += _READ_VIEW[:nbytes]
            self.transport.pause_reading()
            return
        session = self.session
        session.send_data(self.stream_id, _READ_VIEW[:nbytes])
        self.bytes_read += nbytes
        self.wake()
        if state.send_credit == 0:
            self.transport.pause_reading()
        elif session.queued_data > WRITER_BACKLOG:
            self.transport.pause_reading()
            self.outlet.hold(self)

    def _send_unsent(self) -> None:
        state, sent = self.state, 0
        with memoryview(self._unsent) as unsent:
            while sent < len(unsent) and state.send_credit > 0:
                size = min(len(unsent) - sent, state.send_credit, MAX_DATA)
                self.session.send_data(self.stream_id, unsent[sent : sent + size])
                sent += size
        del self._unsent[:sent]
        self.bytes_read += sent
        self.wake()

    def eof_received(self) -> bool:
        if self.ended:
            return False
        if self._unsent:
            self._eof_unsent = True  # FIN goes out after the bytes read ahead of it
            return True
        self._send_fin()
        return True  # keep the socket open for the other direction (half-close)

    def _send_fin(self) -> None:
        finished = self.session.send_fin(self.stream_id)
        self.wake()
        log.debug("%s: local side finished sending (FIN)", self.describe())
        if finished:
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ended:
            return
        reason = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
        self.session.reset(self.stream_id, reason)
        self.wake()
        self._end(f"reset, local side: {reason}", logging.INFO)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        held, self._held = self._held, 0
        if held:
            self._delivered(held)

    # -- the tunnel -> the socket: events from the session ------------------------------

    def on_data(self, data: bytes | memoryview) -> None:
        self.bytes_written += len(data)
        self._write(data)

    def on_credit(self, unblocked: bool) -> None:
        if unblocked or self._unsent:
            self.start_reading()

    def on_end(self, finished: bool) -> None:
        """The peer's FIN: shut down our writing side; close if our FIN went out too."""
        self._write_eof()
        if finished:
            self._finish()

    def on_reset(self, reason: str, before_open: bool) -> None:
        self._close_abruptly()
        self._end(f"reset by peer: {reason or 'no reason given'}", logging.INFO)

    def abort(self, reason: str, *, notify_peer: bool, failure: StreamFailure | None = None) -> None:
        """End the stream from this side (dial failed, timeout, the tunnel is gone)."""
        if self.ended:
            return
        if notify_peer:
            self.session.reset(self.stream_id, reason)
            self.wake()
        self._close_abruptly()
        self._end(reason, logging.WARNING if notify_peer else logging.INFO, failure)

    # -- internals ---------------------------------------------------------------

    def _write(self, data: bytes | memoryview) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(data)
        if self._writing_paused:
            self._held += len(data)
        else:
            self._delivered(len(data))

    def _delivered(self, size: int) -> None:
        if self.session.delivered(self.stream_id, size):
            self.wake()

    def _write_eof(self) -> None:
        transport = self.transport
        if not transport.is_closing() and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError as exc:  # the peer is already gone (ENOTCONN): that ends this stream only
                self.abort(f"shutdown failed: {exc.strerror or exc}", notify_peer=True)

    def _finish(self) -> None:
        """Both directions sent FIN: close once the write buffer has drained."""
        self.transport.close()
        self._end("closed", logging.INFO)

    def _close_abruptly(self) -> None:
        reset_connection(self.transport)

    def _end(self, how: str, level: int, failure: StreamFailure | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        self._on_end()
        log.log(
            level,
            "%s: %s (peer %s; %d bytes read from it, %d written to it)",
            self.describe(),
            how,
            self.peer or "-",
            self.bytes_read,
            self.bytes_written,
            extra=self.log_fields(reason=how, failure=failure.value if failure else None),
        )

    def _on_end(self) -> None:
        """Hook for the roles: stop their timers."""

    def log_fields(self, **more: object) -> dict[str, object]:
        return fields(self.service_id, self.stream_id, self.peer, **more)
