"""One stream: a TCP socket on one side of the tunnel, pumped to and from frames.

The same class serves both programs: on the server it wraps a user's
connection, on the agent the connection it dialled to the local service. It
is an asyncio BufferedProtocol so that reading is driven by credit: the read
buffer offered to the kernel is never larger than the credit left, and
reading pauses at zero credit, which is what bounds memory per stream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Protocol, cast

from .protocol import (
    HEADER,
    HEADER_SIZE,
    INITIAL_WINDOW,
    MAX_DATA,
    FrameType,
    encode_data,
    encode_fin,
    encode_open_ok,
    encode_rst,
    encode_window,
)
from .logfields import fields
from .reasons import StreamFailure
from .stream_state import StreamState

if TYPE_CHECKING:
    from .tunnel import Tunnel

log = logging.getLogger("reverse_websockify.stream")

# One read buffer for the whole process: get_buffer() and buffer_updated()
# run back to back in one event-loop callback, so streams never share it at
# the same time, and a stream costs no buffer memory while idle.
_READ_BUFFER = bytearray(HEADER_SIZE + MAX_DATA)
_READ_VIEW = memoryview(_READ_BUFFER)
_DATA = int(FrameType.DATA)
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN
READ_AHEAD = 64 * 1024  # the most one read may take while a stream cannot send


class StreamOwner(Protocol):
    """Who learns about a user's socket before a tunnel takes it (the server's service)."""

    def stream_connected(self, stream: Stream) -> None: ...

    def stream_lost(self, stream: Stream) -> None: ...


class Stream(asyncio.BufferedProtocol):
    def __init__(self, owner: StreamOwner | None = None, window: int = INITIAL_WINDOW) -> None:
        self.owner = owner
        self.window = window
        self.transport: asyncio.Transport | None = None
        self.tunnel: Tunnel | None = None
        self.stream_id = 0
        self.state: StreamState | None = None
        self.peer = ""
        self.user = ""  # agent: the user's address as the server reported it in OPEN
        self.bytes_sent = 0  # TCP -> tunnel
        self.bytes_received = 0  # tunnel -> TCP
        self.dial_task: asyncio.Task[None] | None = None
        self.accepted_at = 0.0  # time.monotonic() when the socket connected (server: the user's accept)
        self.open_timer: asyncio.TimerHandle | None = None  # server: OPEN_OK must come in time
        self._pending: list[bytes | memoryview] = []  # DATA that arrived before the dial finished
        self._pending_fin = False
        self._unsent = bytearray()  # read from the socket while we could not send it yet
        self._eof_unsent = False  # the socket's EOF came after _unsent; FIN follows it
        self._writing_paused = False
        self._held = 0  # delivered to the transport while it was above its high-water mark
        self._ended = False

    # -- lifecycle -------------------------------------------------------------

    def attach(self, tunnel: Tunnel, stream_id: int) -> None:
        self.tunnel = tunnel
        self.stream_id = stream_id
        self.state = StreamState(stream_id, self.window)

    def describe(self) -> str:
        name = self.tunnel.service_id if self.tunnel else getattr(self.owner, "service_id", "?")
        return f"service {name} stream {self.stream_id}"

    def start_reading(self) -> None:
        """Send what was read ahead (see buffer_updated), then read the socket while there is credit."""
        transport, state = self.transport, self.state
        if transport is None or state is None or state.fin_sent or state.reset or transport.is_closing():
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

    # -- asyncio callbacks: the TCP side ---------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.transport = transport
        self.accepted_at = time.monotonic()  # not the loop's time: get_running_loop() costs a getpid()
        transport.pause_reading()  # until a tunnel has credit for us
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        if self.owner is not None:  # server: a user connected
            self.owner.stream_connected(self)
            return
        # agent: the dial to the local service succeeded
        state, tunnel = self.state, self.tunnel
        assert state is not None and tunnel is not None
        if state.reset or tunnel.closed:
            transport.abort()
            return
        tunnel.send(encode_open_ok(self.stream_id))
        log.info("%s: user %s connected to %s", self.describe(), self.user or "?", self.peer, extra=self._fields())
        pending, self._pending = self._pending, []
        for payload in pending:
            self._write(payload)
        if self._pending_fin:
            self._write_eof()
        if state.finished:
            self._finish()
        else:
            self.start_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        state = self.state
        credit = state.send_credit if state is not None and self.tunnel is not None and not self._unsent else 0
        # Normally the buffer is exactly the credit left, so a read can never overrun it. A read
        # while we cannot send (no tunnel yet, no credit: uvloop may finish a read it started
        # before pause_reading) is kept in _unsent, bounded by READ_AHEAD.
        size = min(credit, MAX_DATA) if credit > 0 else READ_AHEAD
        return _READ_VIEW[HEADER_SIZE : HEADER_SIZE + size]

    def buffer_updated(self, nbytes: int) -> None:
        state, tunnel, transport = self.state, self.tunnel, self.transport
        assert transport is not None
        if state is None or tunnel is None or self._unsent or nbytes > state.send_credit:
            self._unsent += _READ_VIEW[HEADER_SIZE : HEADER_SIZE + nbytes]
            transport.pause_reading()
            return
        state.spend(nbytes)
        HEADER.pack_into(_READ_BUFFER, 0, _DATA, self.stream_id)
        tunnel.send(bytes(_READ_VIEW[: HEADER_SIZE + nbytes]))
        self.bytes_sent += nbytes
        tunnel.count_sent(nbytes)
        if state.send_credit == 0:
            transport.pause_reading()

    def _send_unsent(self) -> None:
        state, tunnel = self.state, self.tunnel
        assert state is not None and tunnel is not None
        unsent = self._unsent
        while unsent and state.send_credit > 0:
            size = min(len(unsent), state.send_credit, MAX_DATA)
            state.spend(size)
            tunnel.send(encode_data(self.stream_id, bytes(unsent[:size])))
            del unsent[:size]
            self.bytes_sent += size
            tunnel.count_sent(size)

    def eof_received(self) -> bool:
        state, tunnel = self.state, self.tunnel
        if state is not None and state.reset:
            return False
        if state is None or tunnel is None or self._unsent:
            self._eof_unsent = True  # FIN goes out after the bytes read ahead of it
            return True
        self._send_fin()
        return True  # keep the socket open for the other direction (half-close)

    def _send_fin(self) -> None:
        state, tunnel = self.state, self.tunnel
        assert state is not None and tunnel is not None
        state.send_fin()
        tunnel.send(encode_fin(self.stream_id))
        log.debug("%s: local side finished sending (FIN)", self.describe())
        if state.finished:
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner is not None and self.tunnel is None:
            self.owner.stream_lost(self)
            return
        state, tunnel = self.state, self.tunnel
        if state is None or tunnel is None or self._ended:
            return
        if not state.finished:
            state.reset = True
            reason = f"{type(exc).__name__}: {exc}" if exc else "connection closed"
            tunnel.send(encode_rst(self.stream_id, reason))
            self._end(f"reset, local side: {reason}", logging.INFO)
        else:
            self._end("closed", logging.INFO)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        held, self._held = self._held, 0
        if held:
            self._delivered(held)

    # -- frames from the tunnel ------------------------------------------------

    def on_open_ok(self) -> None:
        assert self.state is not None
        self.state.confirm_open()
        self._cancel_open_timer()
        if self.tunnel is not None:
            self.tunnel.stream_ready(self)
        log.debug("%s: agent connected to its service", self.describe())

    def on_data(self, payload: bytes | memoryview) -> None:
        state = self.state
        assert state is not None
        size = len(payload)
        state.received(size)
        self.bytes_received += size
        if self.transport is None:
            self._pending.append(payload)
        else:
            self._write(payload)

    def on_window(self, increment: int) -> None:
        state = self.state
        assert state is not None
        was_empty = state.send_credit == 0
        state.granted(increment)
        if was_empty or self._unsent:
            self.start_reading()

    def on_fin(self) -> None:
        state = self.state
        assert state is not None
        state.receive_fin()
        if self.transport is None:
            self._pending_fin = True
            return
        self._write_eof()
        if state.finished:
            self._finish()

    def on_rst(self, reason: str) -> None:
        assert self.state is not None
        failure = None
        if self.owner is not None and not self.state.open_confirmed and self.tunnel is not None:
            failure = StreamFailure.DIAL_FAILED  # the agent could not reach its service
            self.tunnel.stream_failed(failure)
        self.state.reset = True
        self._abort_socket()
        self._end(f"reset by peer: {reason or 'no reason given'}", logging.INFO, failure)

    def abort(self, reason: str, *, notify_peer: bool, failure: StreamFailure | None = None) -> None:
        """End the stream from this side (tunnel gone, dial failed, timeout)."""
        state, tunnel = self.state, self.tunnel
        if state is None or self._ended:
            self._abort_socket()
            return
        state.reset = True
        if notify_peer and tunnel is not None:
            tunnel.send(encode_rst(self.stream_id, reason))
        self._abort_socket()
        self._end(reason, logging.WARNING if notify_peer else logging.INFO, failure)

    # -- internals ---------------------------------------------------------------

    def _write(self, payload: bytes | memoryview) -> None:
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        transport.write(payload)
        if self._writing_paused:
            self._held += len(payload)
        else:
            self._delivered(len(payload))

    def _delivered(self, size: int) -> None:
        state, tunnel = self.state, self.tunnel
        assert state is not None and tunnel is not None
        increment = state.delivered(size)
        if increment and not tunnel.closed:
            tunnel.send(encode_window(self.stream_id, increment))

    def _write_eof(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError as exc:  # the peer is already gone (ENOTCONN): that ends this stream only
                self.abort(f"shutdown failed: {exc.strerror or exc}", notify_peer=True)

    def _finish(self) -> None:
        """Both directions sent FIN: close once the write buffer has drained."""
        if self.transport is not None:
            self.transport.close()
        self._end("closed", logging.INFO)

    def _cancel_open_timer(self) -> None:
        if self.open_timer is not None:
            self.open_timer.cancel()
            self.open_timer = None

    def _abort_socket(self) -> None:
        """Close the socket with a TCP reset, so that a cut-short stream never looks complete."""
        if self.dial_task is not None and not self.dial_task.done():
            self.dial_task.cancel()
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            transport.abort()

    def _end(self, how: str, level: int, failure: StreamFailure | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._cancel_open_timer()
        if self.tunnel is not None:
            self.tunnel.stream_ended(self)
        log.log(
            level,
            "%s: %s (peer %s; %d bytes read from it, %d written to it)",
            self.describe(),
            how,
            self.peer or "-",
            self.bytes_sent,
            self.bytes_received,
            extra=self._fields(reason=how, failure=failure.value if failure else None),
        )

    def _fields(self, **more: object) -> dict[str, object]:
        name = self.tunnel.service_id if self.tunnel else getattr(self.owner, "service_id", "?")
        return fields(name, self.stream_id or None, self.peer, **more)
