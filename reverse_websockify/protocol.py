"""Wire protocol v1 and v2: frame types and their encoding — pure, no I/O.

Every WebSocket binary message carries exactly one frame::

    +--------+--------------------+---------------------------
    |  type  | stream id (u32 BE) | body (type-specific)
    +--------+--------------------+---------------------------

Keeping this module free of sockets and asyncio (like websockets' own
``frames.py`` or h11) lets the tests round-trip and fuzz it directly.
See docs/protocol.md for the full specification.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

SUBPROTOCOL = "reverse-websockify.v1"
"""WebSocket subprotocol of version 1; an incompatible version is a new name."""

SUBPROTOCOL_V2 = "reverse-websockify.v2"
"""Version 2: version 1 plus sessions that survive a lost WebSocket (HELLO, RESUME; docs/protocol.md)."""

VERSIONS = {SUBPROTOCOL: 1, SUBPROTOCOL_V2: 2}

RESUME_HEADER = "X-Reverse-Websockify-Resume"
"""An agent that asks to resume a session sends ``<session id hex>.<secret hex>`` in this header."""

AGENT_PATH_PREFIX = "/forward_to_me/"

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size  # 5
WINDOW_BODY = struct.Struct(">I")

# 256 KiB: asyncio's selector transports read at most 256 KiB per recv(), so a
# larger frame would never fill, and websockets' per-message cost is paid once
# per chunk. Tuned with bench/ (see README, Performance).
MAX_DATA = 256 * 1024

# 1 MiB of credit per stream and direction: enough to keep a loopback or LAN
# pipe full (bandwidth-delay product), while 1,000 streams still bound the
# buffered data to what the peers actually granted.
INITIAL_WINDOW = 1024 * 1024

# Credit above this means the peer is broken or hostile: nobody grants 1 GiB.
MAX_CREDIT = 1 << 30

MAX_STREAM_ID = (1 << 32) - 1

# The largest WebSocket message a peer may send us.
MAX_MESSAGE = HEADER_SIZE + MAX_DATA

MAX_REASON = 1024  # bytes of RST reason / OPEN peer address we keep

# WebSocket close codes this protocol uses (RFC 6455 section 7.4; 4000-4999 are ours).
CLOSE_GOING_AWAY = 1001  # the agent or the server is shutting down, or the service was removed
CLOSE_PROTOCOL_ERROR = 1002  # the peer broke this protocol (the reason says how)
CLOSE_POLICY = 1008  # the agent may no longer attach: its certificate was revoked or the binding changed
CLOSE_ABNORMAL = 1006  # no close frame: the link was cut (never sent, only reported)
CLOSE_REPLACED = 4000  # a newer agent for the same service ID took over


class FrameType(enum.IntEnum):
    OPEN = 1
    OPEN_OK = 2
    DATA = 3
    WINDOW = 4
    FIN = 5
    RST = 6
    HELLO = 7  # v2, server -> agent, stream id 0: the session (new or resumed)
    RESUME = 8  # v2, both ways, stream id 0: what this side holds of each stream
    GRANT = 9  # v2, both ways: credit for bytes not yet delivered, i.e. the receiver's window grows
    RELEASE = 10  # v2, both ways: bytes delivered whose credit is kept, i.e. the receiver's window shrinks


SESSION_FRAMES = (FrameType.HELLO, FrameType.RESUME)
"""v2 frames of the session itself, on stream id 0."""
AMOUNT_FRAMES = (FrameType.WINDOW, FrameType.GRANT, FrameType.RELEASE)
"""Flow-control frames whose body is one u32 byte count (WINDOW_BODY)."""


SESSION_ID_SIZE = 16
SECRET_SIZE = 32
HELLO_BODY = struct.Struct(">BI16s32s")  # flags, resume seconds, session id, secret
HELLO_RESUMED = 1
RESUME_HEAD = struct.Struct(">BI")  # flags, highest stream id this side has seen opened
RESUME_MORE = 1  # another RESUME frame follows
RESUME_ENTRY = struct.Struct(">IQQB")  # stream id, bytes received, credit limit, flags
ENTRY_FIN_RECEIVED = 1
ENTRY_OPEN_CONFIRMED = 2
RESUME_ENTRIES_PER_FRAME = (MAX_DATA - RESUME_HEAD.size) // RESUME_ENTRY.size


class ProtocolError(Exception):
    """The peer broke the protocol: the whole WebSocket must be closed (1002)."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    stream_id: int
    body: bytes | memoryview = b""

    @property
    def window_increment(self) -> int:
        """The byte count of WINDOW, GRANT or RELEASE."""
        return int(WINDOW_BODY.unpack(self.body)[0])

    @property
    def text(self) -> str:
        """The body of OPEN (peer address) or RST (reason), for logs."""
        return bytes(self.body).decode("utf-8", "replace")


def _header(frame_type: FrameType, stream_id: int) -> bytes:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} out of range 1..{MAX_STREAM_ID}")
    return HEADER.pack(frame_type, stream_id)


def _text(text: str) -> bytes:
    """UTF-8, cut to MAX_REASON bytes without splitting a character."""
    return text.encode()[:MAX_REASON].decode("utf-8", "ignore").encode()


def encode_open(stream_id: int, peer: str = "") -> bytes:
    return _header(FrameType.OPEN, stream_id) + _text(peer)


def encode_open_ok(stream_id: int) -> bytes:
    return _header(FrameType.OPEN_OK, stream_id)


def encode_data(stream_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    """One DATA frame; the payload is copied once, into the frame."""
    if not 0 < len(payload) <= MAX_DATA:
        raise ValueError(f"DATA payload of {len(payload)} bytes; 1..{MAX_DATA} allowed")
    return _header(FrameType.DATA, stream_id) + payload


def data_tail(frame: bytes, skip: int) -> bytes:
    """A DATA frame with the first ``skip`` bytes of ``frame``'s payload left out (a resume's retransmission)."""
    stream_id = HEADER.unpack_from(frame)[1]
    return encode_data(stream_id, memoryview(frame)[HEADER_SIZE + skip :])


def peek_stream_id(message: bytes | bytearray | memoryview | str) -> int:
    """The stream id of a message that may not decode (for logging an unexpected error); 0 if none."""
    if isinstance(message, str) or len(message) < HEADER_SIZE:
        return 0
    return int(HEADER.unpack_from(message)[1])


def encode_window(stream_id: int, increment: int, frame_type: FrameType = FrameType.WINDOW) -> bytes:
    """WINDOW (credit for delivered bytes), or in v2 GRANT (window grows) or RELEASE (window shrinks)."""
    if not 0 < increment <= MAX_CREDIT:
        raise ValueError(f"{frame_type.name} of {increment} out of range")
    return _header(frame_type, stream_id) + WINDOW_BODY.pack(increment)


def encode_fin(stream_id: int) -> bytes:
    return _header(FrameType.FIN, stream_id)


def encode_rst(stream_id: int, reason: str = "") -> bytes:
    return _header(FrameType.RST, stream_id) + _text(reason)


@dataclass(frozen=True)
class Hello:
    """HELLO: the server names the session this WebSocket carries, and the secret that resumes it."""

    resumed: bool
    resume_seconds: int
    session_id: bytes
    secret: bytes = field(repr=False)


@dataclass(frozen=True)
class StreamProgress:
    """One stream in a RESUME report: how far this side got with what the peer sends on it."""

    stream_id: int
    received: int  # payload bytes received on the stream, in total
    limit: int  # the credit granted, in total: the peer may send up to this many bytes
    fin_received: bool
    open_confirmed: bool


@dataclass(frozen=True)
class ResumeReport:
    highest_id: int
    streams: tuple[StreamProgress, ...]
    more: bool = False


def encode_hello(hello: Hello) -> bytes:
    return HEADER.pack(FrameType.HELLO, 0) + HELLO_BODY.pack(
        HELLO_RESUMED if hello.resumed else 0, hello.resume_seconds, hello.session_id, hello.secret)


def encode_resume(highest_id: int, streams: list[StreamProgress]) -> list[bytes]:
    """One or more RESUME frames (RESUME_ENTRIES_PER_FRAME streams each; the last has no MORE flag)."""
    frames = []
    chunks = [streams[i : i + RESUME_ENTRIES_PER_FRAME] for i in range(0, len(streams), RESUME_ENTRIES_PER_FRAME)]
    for index, chunk in enumerate(chunks or [[]]):
        flags = RESUME_MORE if index < len(chunks) - 1 else 0
        body = b"".join(
            RESUME_ENTRY.pack(p.stream_id, p.received, p.limit,
                              (ENTRY_FIN_RECEIVED if p.fin_received else 0)
                              | (ENTRY_OPEN_CONFIRMED if p.open_confirmed else 0))
            for p in chunk)
        frames.append(HEADER.pack(FrameType.RESUME, 0) + RESUME_HEAD.pack(flags, highest_id) + body)
    return frames


def parse_hello(body: bytes | memoryview) -> Hello:
    if len(body) != HELLO_BODY.size:
        raise ProtocolError(f"HELLO body of {len(body)} bytes; {HELLO_BODY.size} expected")
    flags, seconds, session_id, secret = HELLO_BODY.unpack(body)
    return Hello(bool(flags & HELLO_RESUMED), seconds, session_id, secret)


def parse_resume(body: bytes | memoryview) -> ResumeReport:
    size = len(body)
    if size < RESUME_HEAD.size or (size - RESUME_HEAD.size) % RESUME_ENTRY.size:
        raise ProtocolError(f"RESUME body of {size} bytes is not a header and whole entries")
    flags, highest_id = RESUME_HEAD.unpack_from(body)
    streams = []
    for offset in range(RESUME_HEAD.size, size, RESUME_ENTRY.size):
        stream_id, received, limit, entry_flags = RESUME_ENTRY.unpack_from(body, offset)
        if stream_id == 0 or stream_id > highest_id:
            raise ProtocolError(f"RESUME names stream {stream_id}, above the highest id {highest_id}")
        if limit < received or limit - received > MAX_CREDIT:
            raise ProtocolError(f"RESUME for stream {stream_id}: credit limit {limit} with {received} received")
        streams.append(StreamProgress(stream_id, received, limit, bool(entry_flags & ENTRY_FIN_RECEIVED),
                                      bool(entry_flags & ENTRY_OPEN_CONFIRMED)))
    return ResumeReport(highest_id, tuple(streams), bool(flags & RESUME_MORE))


def decode(message: bytes | bytearray | memoryview | str, version: int = 1) -> Frame:
    """Parse one WebSocket message into a Frame, or raise ProtocolError.

    Checks everything that can be checked without knowing the streams'
    state; the session checks the rest (ids, credit, direction).
    """
    if isinstance(message, str):
        raise ProtocolError("text message received; only binary frames are allowed")
    if len(message) < HEADER_SIZE:
        raise ProtocolError(f"frame of {len(message)} bytes is shorter than the 5-byte header")
    type_code, stream_id = HEADER.unpack_from(message)
    try:
        frame_type = FrameType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_code}") from None
    if frame_type >= FrameType.HELLO and version < 2:
        raise ProtocolError(f"unknown frame type {type_code}")
    if frame_type in SESSION_FRAMES:
        if stream_id != 0:
            raise ProtocolError(f"{frame_type.name} for stream {stream_id}; it belongs to stream id 0")
        return Frame(frame_type, 0, bytes(memoryview(message)[HEADER_SIZE:]))
    if stream_id == 0:
        raise ProtocolError(f"{frame_type.name} for stream id 0")
    # DATA stays a view of the message: the payload is copied once, into the socket.
    body = memoryview(message)[HEADER_SIZE:]
    size = len(body)
    if frame_type is FrameType.DATA:
        if size == 0:
            raise ProtocolError(f"empty DATA on stream {stream_id}")
        if size > MAX_DATA:
            raise ProtocolError(f"DATA of {size} bytes on stream {stream_id} exceeds {MAX_DATA}")
        return Frame(frame_type, stream_id, body)
    if frame_type in AMOUNT_FRAMES:
        name = frame_type.name
        if size != WINDOW_BODY.size:
            raise ProtocolError(f"{name} body of {size} bytes on stream {stream_id}; 4 expected")
        increment = WINDOW_BODY.unpack_from(body)[0]
        if increment == 0:
            raise ProtocolError(f"{name} of 0 on stream {stream_id}")
        if increment > MAX_CREDIT:
            raise ProtocolError(f"{name} of {increment} on stream {stream_id} is absurdly large")
    elif frame_type in (FrameType.OPEN_OK, FrameType.FIN):
        if size:
            raise ProtocolError(f"{frame_type.name} with a {size}-byte body on stream {stream_id}")
    elif size > MAX_REASON:  # OPEN, RST
        raise ProtocolError(f"{frame_type.name} text of {size} bytes on stream {stream_id}")
    return Frame(frame_type, stream_id, bytes(body))
