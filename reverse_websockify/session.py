"""The streams of one WebSocket and their rules — pure, no I/O (like h2's ``H2Connection``).

A Session is fed every message the WebSocket delivers (``receive``: bytes in,
events out) and every local happening (a user connected, bytes were read from
a socket, a socket hung up: ``open_stream``, ``send_data``, ``send_fin``,
``reset``, ``delivered``). It enforces docs/protocol.md — who may open
streams and with which ids, the OPEN / OPEN_OK gate, ``max_streams``, credit,
FIN and RST — and queues the frames to send, which the tunnel collects with
``data_to_send()``. It never touches a socket, a timer or a logger, so every
rule is tested by wiring two Sessions back to back (tests/unit/test_session.py).

The events are small immutable records; the asyncio layer dispatches them to
the stream endpoint with the same id.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Union

from .protocol import (
    INITIAL_WINDOW,
    MAX_STREAM_ID,
    FrameType,
    ProtocolError,
    decode,
    encode_data,
    encode_fin,
    encode_open,
    encode_open_ok,
    encode_rst,
    encode_window,
)
from .stream_state import StreamState

Role = Literal["server", "agent"]
"""Only the server opens streams; the agent answers them."""

Message = Union[bytes, bytearray, memoryview, str]


class StreamOpened(NamedTuple):
    """Agent: the server opened a stream for a user at ``peer``; connect it to the service."""

    stream_id: int
    peer: str


class OpenRefused(NamedTuple):
    """Agent: an OPEN beyond ``max_streams`` was answered with RST (for the log)."""

    stream_id: int
    reason: str


class OpenConfirmed(NamedTuple):
    """Server: the agent reached its service (OPEN_OK)."""

    stream_id: int


class DataReceived(NamedTuple):
    stream_id: int
    data: bytes | memoryview


class CreditGranted(NamedTuple):
    """WINDOW: ``unblocked`` when the stream had no credit left, so its reading had stopped."""

    stream_id: int
    unblocked: bool


class EndReceived(NamedTuple):
    """FIN: the peer sends no more; ``finished`` when our FIN went out too (the stream is over)."""

    stream_id: int
    finished: bool


class StreamReset(NamedTuple):
    """RST: the stream is over; ``before_open`` on the server when it came instead of OPEN_OK
    (the agent could not reach its service)."""

    stream_id: int
    reason: str
    before_open: bool


Event = Union[StreamOpened, OpenRefused, OpenConfirmed, DataReceived, CreditGranted, EndReceived, StreamReset]

_NO_IDS: tuple[int, ...] = ()


class Session:
    """The stream table of one WebSocket, seen from ``role``."""

    def __init__(self, role: Role, *, window: int = INITIAL_WINDOW, max_streams: int = 10000) -> None:
        self.role = role
        self.window = window
        self.max_streams = max_streams
        self.streams: dict[int, StreamState] = {}
        self.highest_id = 0  # the highest stream id ever opened on this WebSocket
        self.streams_opened = 0
        self.bytes_sent = 0  # payload bytes sent as DATA
        self.bytes_received = 0  # payload bytes received as DATA
        self.closed = False
        # Only the server waits for OPEN_OK before it accepts frames on a stream: the server may
        # send DATA right after OPEN, and the agent holds it until its dial succeeds.
        self._gated = role == "server"
        self._outgoing: list[bytes] = []
        self._ended: list[int] = []

    # -- what goes out ------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        return bool(self._outgoing)

    def data_to_send(self) -> list[bytes]:
        """The frames queued since the last call, in order: one WebSocket message each."""
        frames, self._outgoing = self._outgoing, []
        return frames

    def ended_streams(self) -> list[int] | tuple[int, ...]:
        """Ids of the streams that left the table since the last call (for the endpoint table)."""
        if not self._ended:
            return _NO_IDS
        ended, self._ended = self._ended, []
        return ended

    # -- local happenings -----------------------------------------------------------------

    def open_stream(self, peer: str) -> int | None:
        """Server: a user connected; the new stream's id, or None at ``max_streams``."""
        if self.role != "server":
            raise RuntimeError("only the server opens streams")
        if len(self.streams) >= self.max_streams:
            return None
        if self.highest_id >= MAX_STREAM_ID:
            return None  # 4 billion streams on one WebSocket: refuse rather than reuse an id
        self.highest_id += 1
        stream_id = self.highest_id
        self.streams[stream_id] = StreamState(stream_id, self.window)
        self.streams_opened += 1
        self._outgoing.append(encode_open(stream_id, peer))
        return stream_id

    def confirm_open(self, stream_id: int) -> None:
        """Agent: the service accepted the connection for ``stream_id`` (OPEN_OK)."""
        self.streams[stream_id].confirm_open()
        self._outgoing.append(encode_open_ok(stream_id))

    def send_credit(self, stream_id: int) -> int:
        return self.streams[stream_id].send_credit

    def send_data(self, stream_id: int, payload: bytes | bytearray | memoryview) -> None:
        """Queue DATA; the caller read at most the stream's credit (never more than MAX_DATA)."""
        state = self.streams[stream_id]
        if not (state.open_confirmed or self._gated):
            raise RuntimeError(f"stream {stream_id}: DATA before OPEN_OK")
        state.spend(len(payload))
        self._outgoing.append(encode_data(stream_id, payload))
        self.bytes_sent += len(payload)

    def send_fin(self, stream_id: int) -> bool:
        """Queue FIN; True when the stream is now over (the peer's FIN came before)."""
        state = self.streams[stream_id]
        if not (state.open_confirmed or self._gated):
            raise RuntimeError(f"stream {stream_id}: FIN before OPEN_OK")
        state.send_fin()
        self._outgoing.append(encode_fin(stream_id))
        if state.fin_received:
            self._forget(stream_id)
            return True
        return False

    def reset(self, stream_id: int, reason: str) -> None:
        """Queue RST and forget the stream; nothing if it has already ended."""
        state = self.streams.get(stream_id)
        if state is None:
            return
        state.reset()
        self._outgoing.append(encode_rst(stream_id, reason))
        self._forget(stream_id)

    def delivered(self, stream_id: int, nbytes: int) -> bool:
        """``nbytes`` received on ``stream_id`` left the process; True when a WINDOW was queued."""
        state = self.streams.get(stream_id)
        if state is None:
            return False  # the stream ended while its last bytes were draining
        increment = state.delivered(nbytes)
        if increment:
            self._outgoing.append(encode_window(stream_id, increment))
            return True
        return False

    def close(self) -> list[int]:
        """The WebSocket is gone: every stream ends, nothing more goes out. Returns their ids."""
        self.closed = True
        ids = list(self.streams)
        for state in self.streams.values():
            state.reset()
        self.streams.clear()
        self._outgoing.clear()
        self._ended.clear()
        return ids

    # -- frames from the peer ---------------------------------------------------------------

    def receive(self, message: Message) -> list[Event]:
        """Apply one WebSocket message; raise ProtocolError when the peer broke the protocol."""
        frame = decode(message)
        kind = frame.type
        stream_id = frame.stream_id
        if kind is FrameType.OPEN:
            return self._accept_open(stream_id, frame.text)
        state = self.streams.get(stream_id)
        if state is None:
            if stream_id > self.highest_id:
                raise ProtocolError(f"{kind.name} for stream {stream_id}, which was never opened")
            return []  # the stream ended while this frame was in flight: normal
        if not state.open_confirmed and self._gated and kind is not FrameType.OPEN_OK and kind is not FrameType.RST:
            raise ProtocolError(f"{kind.name} on stream {stream_id} before OPEN_OK")
        if kind is FrameType.DATA:
            size = len(frame.body)
            state.received(size)
            self.bytes_received += size
            return [DataReceived(stream_id, frame.body)]
        if kind is FrameType.WINDOW:
            blocked = state.send_credit == 0
            state.granted(frame.window_increment)
            return [CreditGranted(stream_id, blocked)]
        if kind is FrameType.FIN:
            state.receive_fin()
            if state.fin_sent:
                self._forget(stream_id)
                return [EndReceived(stream_id, True)]
            return [EndReceived(stream_id, False)]
        if kind is FrameType.RST:
            before_open = not state.open_confirmed
            state.reset()
            self._forget(stream_id)
            return [StreamReset(stream_id, frame.text, before_open and self._gated)]
        if kind is FrameType.OPEN_OK:
            if self.role == "agent":
                raise ProtocolError(f"OPEN_OK from the server on stream {stream_id}")
            state.confirm_open()
            return [OpenConfirmed(stream_id)]
        raise AssertionError(f"unhandled frame type {kind!r}")  # pragma: no cover (decode knows six types)

    def _accept_open(self, stream_id: int, peer: str) -> list[Event]:
        if self.role == "server":
            raise ProtocolError(f"OPEN from the agent (stream {stream_id}); only the server opens streams")
        if stream_id in self.streams:
            raise ProtocolError(f"OPEN for stream {stream_id}, which is already open")
        if stream_id <= self.highest_id:
            raise ProtocolError(f"OPEN for stream {stream_id}; ids must increase (last was {self.highest_id})")
        self.highest_id = stream_id
        if len(self.streams) >= self.max_streams:
            reason = "too many streams on this agent"
            self._outgoing.append(encode_rst(stream_id, reason))
            return [OpenRefused(stream_id, reason)]
        self.streams[stream_id] = StreamState(stream_id, self.window)
        self.streams_opened += 1
        return [StreamOpened(stream_id, peer)]

    def _forget(self, stream_id: int) -> None:
        del self.streams[stream_id]
        self._ended.append(stream_id)
