"""Everything that relies on websockets' internals, in one place.

websockets' public asyncio API hands messages out one ``await recv()`` at a
time and writes one message per ``send()``. The relay needs two shortcuts
through its sans-I/O ``Protocol`` under the asyncio connection:

- **direct delivery**: messages parsed from one read are handed to the tunnel
  inside that read's callback (``process_event`` override), instead of being
  queued in an Assembler and picked up by a task, one loop turn and one future
  each. Measured on 2 cores (uvloop, ab -c32 through the tunnel): 8 % less CPU
  per connection, server and agent together; bulk unchanged within the noise.
- **batched writes**: every frame queued in one loop turn is framed
  (``wsframes.frame_binary``) and written with one ``writelines`` (one
  send() system call instead of one per frame), like websockets' own
  ``broadcast()``.
- **our own framing of binary messages** (wsframes.py): the relay's DATA
  frames are framed and parsed without websockets' generic reader and
  writer, which copied every payload several times; reads go into our
  buffers (``BufferedReads``). Every other frame is websockets' to parse.

- **large HTTP bodies written apart** (``response_with_body``): websockets writes a response as
  one bytes object, head and body concatenated; for the 4.6 MB status document of an 8,000-agent
  fleet that copy (fresh pages, faulted in) held every tunnel about 3 ms per load. A
  ``BodyApartResponse`` is written as head, then body.

and it reads ``protocol.close_sent`` to say *why* our side closed (e.g.
"keepalive ping timeout"). These are stable across websockets 15-17;
``SUPPORTED_WEBSOCKETS`` is the range pinned in pyproject.toml, and
tests/integration/test_wsconnection.py fails loudly when one of them moves.
Control frames, the handshake and the closing handshake stay websockets' own;
websockets gets every frame it parses whole, so its parser is always between frames.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Union

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Side, State

from .protocol import CLOSE_ABNORMAL, MAX_MESSAGE, SUBPROTOCOL, SUBPROTOCOL_V2
from .wsframes import IncomingFrames, frame_binary, pong_for

SUPPORTED_WEBSOCKETS = (15, 18)
"""websockets major versions this module is written against: >= 15, < 18 (pyproject.toml)."""

# How long a closing handshake may take before the socket is simply dropped.
# Short, because the usual reason to close is a dead link (keepalive timeout),
# where waiting longer only delays telling the users.
CLOSE_TIMEOUT = 2.0

# websockets awaits drain() above this many buffered bytes; a few frames' worth
# keeps the socket busy without letting the queue hide backpressure.
WRITE_LIMIT = 4 * MAX_MESSAGE

Message = Union[bytes, bytearray, memoryview, str]
MessageSink = Callable[[Message], None]
_BINARY, _TEXT, _CONT = Opcode.BINARY, Opcode.TEXT, Opcode.CONT
_HANDSHAKE_VIEW = memoryview(bytearray(64 * 1024))
"""The read buffer until our framing starts (the handshake): get_buffer() and buffer_updated() run
back to back in one event-loop callback, so connections never share it at the same time."""


def connection_options(*, ping_interval: float | None, ping_timeout: float | None, open_timeout: float,
                       subprotocols: tuple[str, ...] = (SUBPROTOCOL_V2, SUBPROTOCOL)) -> dict[str, Any]:
    """The keyword arguments of websockets' ``serve()`` and ``connect()`` that both programs share.

    ``subprotocols``: in order of preference (the server picks the first one the agent offers).
    """
    return {
        "subprotocols": list(subprotocols),
        "compression": None,  # tunnelled bytes are often encrypted already; deflate costs CPU for nothing
        "max_size": MAX_MESSAGE,
        "ping_interval": ping_interval,
        "ping_timeout": ping_timeout,
        "close_timeout": CLOSE_TIMEOUT,
        "open_timeout": open_timeout,
        "write_limit": WRITE_LIMIT,
    }


class BufferedReads(asyncio.BufferedProtocol):
    """Stands in front of a connection as its transport's protocol, so that reads go into our buffers.

    uvloop reads into a protocol's own buffer only when the protocol is not an asyncio.Protocol,
    and websockets' connections are one. Everything else the transport tells is passed on.
    """

    __slots__ = ("connection",)

    def __init__(self, connection: DirectDelivery) -> None:
        self.connection = connection

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.connection.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.connection.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        return self.connection.eof_received()  # type: ignore[attr-defined, no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.connection.pause_writing()  # type: ignore[attr-defined]

    def resume_writing(self) -> None:
        self.connection.resume_writing()  # type: ignore[attr-defined]


class DirectDelivery:
    """Mixin for websockets' asyncio connections: each binary message goes to a sink at once.

    Reads come through ``BufferedReads``; once the connection is open they go through
    ``IncomingFrames`` (wsframes.py): binary messages are parsed there, every other frame is
    handed to websockets whole. Messages that arrive before a sink is set are held. A text
    message is delivered as ``""`` (the tunnel refuses any text); fragments are joined.
    """

    _sink: MessageSink | None = None
    _held: list[Message] | None = None
    _fragments: list[bytes | bytearray] | None = None
    _fragmented_text = False
    _frames: IncomingFrames | None = None
    _websockets_reads = False  # every byte goes through websockets' own parser (see _before_open)
    _head_tail = b""  # the last bytes of the handshake so far, to find its end across reads
    _head_seen = False  # the handshake's end went to websockets: what follows before OPEN is frames

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        transport.set_protocol(BufferedReads(self))

    def deliver_to(self, sink: MessageSink) -> None:
        held, self._held = self._held, None
        self._sink = sink
        for message in held or ():
            sink(message)

    def _deliver(self, data: Message) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
        elif self._held is None:
            self._held = [data]
        else:
            self._held.append(data)

    # -- reads, as asyncio.BufferedProtocol has them (BufferedReads) ------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        frames = self._frames
        return frames.get_buffer() if frames is not None else _HANDSHAKE_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        frames = self._frames
        if frames is not None:
            frames.buffer_updated(nbytes)
        else:
            self._before_open(bytes(_HANDSHAKE_VIEW[:nbytes]))

    def _before_open(self, data: bytes) -> None:
        """Bytes before our own framing starts: websockets' (the handshake), up to the first frame.

        The client's handshake ends with the server's response, which frames may follow in the
        same read: those go to ``IncomingFrames``. The server starts its framing at the first
        read once the connection is open, if websockets holds nothing unparsed; a peer that sent
        frames before the handshake was over is read by websockets to the end.
        """
        protocol = self.protocol  # type: ignore[attr-defined]
        if not self._websockets_reads and protocol.state is State.CONNECTING and not self._head_seen:
            probe = self._head_tail + data
            end = probe.find(b"\r\n\r\n")
            if end < 0:
                self._head_tail = probe[-3:]
                self._websockets_received(data)
                return
            cut = end + 4 - len(self._head_tail)
            self._websockets_received(data[:cut])
            self._head_seen = True
            data = data[cut:]
            if not data and protocol.state is State.CONNECTING:
                return  # a server: its response has yet to go out
        if not self._websockets_reads and protocol.state is State.OPEN and not protocol.reader.buffer:
            self._start_framing().feed(data)
            return
        self._websockets_reads = True  # refused or failed, or a peer that sent frames before it was open
        if data:
            self._websockets_received(data)

    def _start_framing(self) -> IncomingFrames:
        protocol = self.protocol  # type: ignore[attr-defined]
        self._frames = frames = IncomingFrames(masked=protocol.side is Side.SERVER, max_size=MAX_MESSAGE,
                                               on_message=self._deliver, on_other=self._other_frame)
        return frames

    def _other_frame(self, data: bytes) -> bool:
        """A frame (or, once escaped, any bytes) for websockets; False once it is no longer open.

        A ping on an open connection is answered here, as websockets would (its pong carries the
        ping's payload; nothing else in websockets follows a ping), without its generic parser. Not
        while more than ``WRITE_LIMIT`` waits to be sent: a peer that pings and does not read would
        otherwise have us buffer pongs without end (websockets did), and RFC 6455 section 5.5.3 lets
        us answer only the latest ping when earlier pongs are still unsent. Never once escaped: the
        bytes are then websockets' to judge (a frame masked wrongly, say), whatever they look like."""
        protocol, transport = self.protocol, self.transport  # type: ignore[attr-defined]
        frames = self._frames
        if frames is not None and not frames.escaped and protocol.state is State.OPEN and not transport.is_closing():
            pong = pong_for(data, mask=protocol.side is Side.CLIENT)
            if pong is not None:
                if transport.get_write_buffer_size() <= WRITE_LIMIT:
                    transport.write(pong)
                return True
        self._websockets_received(data)
        return protocol.state is State.OPEN

    def _websockets_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]

    # -- messages websockets parsed -----------------------------------------------------------

    def process_event(self, event: object) -> None:
        if type(event) is not Frame or event.opcode not in (_BINARY, _TEXT, _CONT):
            super().process_event(event)  # type: ignore[misc]
            return
        opcode = event.opcode
        if opcode is _CONT:  # the websockets protocol object checks the fragment sequence
            fragments = self._fragments
            if fragments is None:  # pragma: no cover (the protocol object refuses a stray CONT)
                return
            fragments.append(event.data)
            if not event.fin:
                return
            data: Message = b"".join(fragments)
            self._fragments = None
            if self._fragmented_text:
                data = ""
        elif not event.fin:
            self._fragments = [event.data]
            self._fragmented_text = opcode is _TEXT
            return
        else:
            data = event.data if opcode is _BINARY else ""
        self._deliver(data)


BODY_APART = 64 * 1024
"""Responses with a larger body are written as head, then body (no concatenated copy)."""


class HeadThenBody(tuple):  # type: ignore[type-arg]
    """What a ``BodyApartResponse`` serializes to: queued in the protocol's writes like bytes,
    split into its two parts by ``DirectServerConnection.send_data``."""

    __slots__ = ()


class BodyApartResponse(Response):
    def serialize(self) -> bytes:
        head = f"HTTP/1.1 {self.status_code} {self.reason_phrase}\r\n".encode("iso-8859-1") + self.headers.serialize()
        return HeadThenBody((head, self.body))  # type: ignore[return-value]


def response_with_body(status_code: int, reason_phrase: str, headers: Any, body: bytes) -> Response:
    cls = BodyApartResponse if len(body) > BODY_APART else Response
    return cls(status_code, reason_phrase, headers, body)


class DirectServerConnection(DirectDelivery, ServerConnection):
    admission: Any = None  # what the server decided while routing the handshake (e.g. the session to resume)
    identity: Any = None  # the AgentIdentity its client certificate carries, if any
    last_heard = 0.0  # time.monotonic() of the last bytes from the agent (liveness.py)

    def buffer_updated(self, nbytes: int) -> None:
        self.last_heard = time.monotonic()
        super().buffer_updated(nbytes)

    def send_data(self) -> None:
        writes = self.protocol.writes
        for i, data in enumerate(writes):
            if isinstance(data, HeadThenBody):
                writes[i:i + 1] = data  # the only item then: a response is the first thing a server sends
                break
        super().send_data()


async def fail_keepalive(connection: Connection) -> None:
    """Drop a link whose peer did not answer a ping in time, exactly as websockets' keepalive does."""
    try:
        async with connection.send_context():
            connection.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
    except ConnectionClosed:
        pass


class DirectClientConnection(DirectDelivery, ClientConnection):
    pass


Connection = Union[DirectServerConnection, DirectClientConnection]


async def write_frames(connection: Connection, frames: list[bytes]) -> None:
    """Send ``frames`` as one binary message each, in one write; raise ConnectionClosed once closing."""
    protocol = connection.protocol
    if protocol.state is not State.OPEN:
        for frame in frames:
            await connection.send(frame)  # raises ConnectionClosed
        return
    data = frame_binary(frames, mask=protocol.side is Side.CLIENT)
    transport = connection.transport
    if len(data) == 1:
        transport.write(data[0])
    else:
        transport.writelines(data)  # scatter-gather on uvloop and Python 3.12+
    await connection.drain()


def pause_reading(connection: Connection) -> None:
    transport = connection.transport
    if transport is not None and not transport.is_closing():
        transport.pause_reading()


def resume_reading(connection: Connection) -> None:
    transport = connection.transport
    if transport is not None and not transport.is_closing():
        transport.resume_reading()


def describe_close(connection: Connection) -> tuple[int | None, str]:
    """(close code, why) of a connection that has ended, for logs and the status page.

    When the peer sent no close frame (code 1006) but our side did, our frame
    says why, e.g. "keepalive ping timeout (code 1011)".
    """
    code = connection.close_code
    if code is None or code == CLOSE_ABNORMAL:
        sent = getattr(connection.protocol, "close_sent", None)
        if sent is not None and sent.reason:
            return sent.code, f"{sent.reason} (code {sent.code})"
        return code, "connection lost (no close frame)"
    return code, f"closed with code {code} {connection.close_reason}".strip()


async def wait_closed_or(connection: Connection, failed: asyncio.Future[Any]) -> None:
    """Wait until the connection has closed or ``failed`` is done, whichever comes first."""
    closed = asyncio.ensure_future(connection.wait_closed())
    try:
        await asyncio.wait((failed, closed), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()


__all__ = [
    "CLOSE_TIMEOUT",
    "ConnectionClosed",
    "DirectClientConnection",
    "DirectServerConnection",
    "connection_options",
    "describe_close",
    "fail_keepalive",
    "pause_reading",
    "resume_reading",
    "wait_closed_or",
    "write_frames",
]
