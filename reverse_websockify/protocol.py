"""Wire protocol v1: frame types and their encoding — pure, no I/O.

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
from dataclasses import dataclass

SUBPROTOCOL = "reverse-websockify.v1"
"""WebSocket subprotocol; a future incompatible version is a new name."""

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
CLOSE_ABNORMAL = 1006  # no close frame: the link was cut (never sent, only reported)
CLOSE_REPLACED = 4000  # a newer agent for the same service ID took over


class FrameType(enum.IntEnum):
    OPEN = 1
    OPEN_OK = 2
    DATA = 3
    WINDOW = 4
    FIN = 5
    RST = 6


class ProtocolError(Exception):
    """The peer broke the protocol: the whole WebSocket must be closed (1002)."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    stream_id: int
    body: bytes | memoryview = b""

    @property
    def window_increment(self) -> int:
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


def peek_stream_id(message: bytes | bytearray | memoryview | str) -> int:
    """The stream id of a message that may not decode (for logging an unexpected error); 0 if none."""
    if isinstance(message, str) or len(message) < HEADER_SIZE:
        return 0
    return int(HEADER.unpack_from(message)[1])


def encode_window(stream_id: int, increment: int) -> bytes:
    if not 0 < increment <= MAX_CREDIT:
        raise ValueError(f"WINDOW increment {increment} out of range")
    return _header(FrameType.WINDOW, stream_id) + WINDOW_BODY.pack(increment)


def encode_fin(stream_id: int) -> bytes:
    return _header(FrameType.FIN, stream_id)


def encode_rst(stream_id: int, reason: str = "") -> bytes:
    return _header(FrameType.RST, stream_id) + _text(reason)


def decode(message: bytes | bytearray | memoryview | str) -> Frame:
    """Parse one WebSocket message into a Frame, or raise ProtocolError.

    Checks everything that can be checked without knowing the streams'
    state; the tunnel checks the rest (ids, credit, direction).
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
    if frame_type is FrameType.WINDOW:
        if size != WINDOW_BODY.size:
            raise ProtocolError(f"WINDOW body of {size} bytes on stream {stream_id}; 4 expected")
        increment = WINDOW_BODY.unpack_from(body)[0]
        if increment == 0:
            raise ProtocolError(f"WINDOW of 0 on stream {stream_id}")
        if increment > MAX_CREDIT:
            raise ProtocolError(f"WINDOW of {increment} on stream {stream_id} is absurdly large")
    elif frame_type in (FrameType.OPEN_OK, FrameType.FIN):
        if size:
            raise ProtocolError(f"{frame_type.name} with a {size}-byte body on stream {stream_id}")
    elif size > MAX_REASON:  # OPEN, RST
        raise ProtocolError(f"{frame_type.name} text of {size} bytes on stream {stream_id}")
    return Frame(frame_type, stream_id, bytes(body))
