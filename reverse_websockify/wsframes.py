"""The relay's own WebSocket framing for binary data messages — pure, no I/O.

Every DATA frame of the tunnel is one binary WebSocket message. websockets'
generic reader copies each one four times (into its stream buffer, out of
it, unmasked, and joined again) and its writer three: with the relay doing
nothing else per byte, those copies were a quarter of the server's CPU in a
profile of one bulk stream. So the relay frames and parses complete binary
messages itself (RFC 6455 section 5.2) and hands every other frame — control
frames, text, fragments, anything malformed — byte for byte to websockets,
which keeps the handshake, pongs, the closing handshake and every check.
The one control frame answered here is a ping (``pong_for``): a fleet's
thousands of agents ping the server every few seconds, and websockets' generic
parser took several percent of its one core to answer them.

``IncomingFrames`` sits in front of websockets' parser. It gives websockets
only whole frames (so websockets' parser is always between frames when the
next one comes) and, once something it does not take apart arrives (a frame
larger than allowed, say), gives it everything from there on. A large
payload is read by the kernel straight into the buffer that becomes the
message: one copy, plus unmasking on the server.
"""

from __future__ import annotations

import os
import struct
from typing import Callable

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover (websockets without its C extension)
    from websockets.utils import apply_mask

__all__ = ["IncomingFrames", "frame_binary", "apply_mask", "pong_for"]

_BINARY = 0x2
_FIN_BINARY = 0x80 | _BINARY
_FIN_PING = 0x89
_FIN_PONG = 0x8A
_MAX_CONTROL = 125  # RFC 6455 section 5.5: a control frame's payload, at most
_MASK_BIT = 0x80
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD16 = struct.Struct("!BBH")
_HEAD64 = struct.Struct("!BBQ")

SCRATCH_SIZE = 256 * 1024
"""The read buffer between large payloads; what a read brings in beyond one frame is parsed from here."""

_SCRATCH = memoryview(bytearray(SCRATCH_SIZE))
"""One for the whole process (a fleet of 8,000 connections would otherwise hold 2 GB): get_buffer() and
buffer_updated() run back to back in one event-loop callback, and nothing keeps a view of it after
(what must outlive the read is copied: masked or not, a message is new bytes; an incomplete frame is
kept as bytes)."""

DIRECT_READ = 16 * 1024
"""A payload with more than this still to come is read by the kernel straight into its own buffer."""

MAX_HEADER = 14
"""2 bytes, 8 of extended length, 4 of mask: after a large payload the next read takes one header only,
so that the payload behind it goes straight into its buffer too."""


def _header(length: int, mask_bit: int) -> bytes:
    if length < 126:
        return bytes((_FIN_BINARY, mask_bit | length))
    if length < 65536:
        return _HEAD16.pack(_FIN_BINARY, mask_bit | 126, length)
    return _HEAD64.pack(_FIN_BINARY, mask_bit | 127, length)


def frame_binary(messages: list[bytes], *, mask: bool) -> list[bytes]:
    """The wire bytes of ``messages`` as unfragmented binary frames, as pieces for one ``writelines``.

    A client masks every frame with a fresh random key (RFC 6455 section 5.3): one ``os.urandom``
    call for all of them. A large payload stays its own piece (no copy when the transport can send
    it at once); small ones are joined to their header.
    """
    out: list[bytes] = []
    append = out.append
    if mask:
        keys = os.urandom(4 * len(messages))
        for i, message in enumerate(messages):
            key = keys[4 * i : 4 * i + 4]
            append(_header(len(message), _MASK_BIT) + key)
            append(apply_mask(message, key))
        return out
    for message in messages:
        if len(message) > 4096:
            append(_header(len(message), 0))
            append(message)
        else:
            append(_header(len(message), 0) + message)
    return out


def pong_for(frame: bytes, *, mask: bool) -> bytes | None:
    """The pong answering ``frame`` if it is a well-formed ping (RFC 6455 section 5.5.2), else None.

    ``frame`` is whole, with the masking ``IncomingFrames`` checked; anything unusual (reserved bits, an
    oversized payload) is None and goes to websockets, which says what is wrong. ``mask``: we are the
    client, so the pong is masked.
    """
    if len(frame) < 2 or frame[0] != _FIN_PING:
        return None
    b1 = frame[1]
    length = b1 & 0x7F
    start = 6 if b1 & _MASK_BIT else 2
    if length > _MAX_CONTROL or len(frame) != start + length:
        return None
    payload = apply_mask(frame[6:], frame[2:6]) if start == 6 else frame[2:]
    if mask:
        key = os.urandom(4)
        return bytes((_FIN_PONG, _MASK_BIT | length)) + key + apply_mask(payload, key)
    return bytes((_FIN_PONG, length)) + payload


class IncomingFrames:
    """Splits what the peer sends on an open WebSocket: binary messages for ``on_message``, the rest for websockets.

    ``masked``: the frames must be masked (we are the server). ``on_other`` gets whole frames
    for websockets and returns False once websockets should have all further bytes (it closed
    the connection or is closing it): then ``escaped`` is True and ``on_other`` gets every
    further byte as it arrives.

    The reads go to ``get_buffer`` / ``buffer_updated``, as asyncio's BufferedProtocol does them.
    """

    __slots__ = ("masked", "max_size", "on_message", "on_other", "escaped", "_pending",
                 "_payload", "_filled", "_key", "_in_fragments", "_header_only")

    def __init__(self, *, masked: bool, max_size: int, on_message: Callable[[bytes | bytearray], None],
                 on_other: Callable[[bytes], bool]) -> None:
        self.masked = masked
        self.max_size = max_size
        self.on_message = on_message
        self.on_other = on_other
        self.escaped = False
        self._pending = b""  # the start of a frame that did not fit in the last read
        self._payload: bytearray | None = None  # a large payload being read in place
        self._filled = 0
        self._key = b""
        self._in_fragments = False  # a fragmented message is under way: websockets assembles it
        self._header_only = False

    def get_buffer(self) -> memoryview:
        payload = self._payload
        if payload is not None:
            return memoryview(payload)[self._filled :]
        if self._header_only and not self._pending:
            return _SCRATCH[:MAX_HEADER]
        return _SCRATCH

    def buffer_updated(self, nbytes: int) -> None:
        if self._payload is not None:
            self._filled += nbytes
            if self._filled == len(self._payload):
                self._finish_payload()
            return
        self._header_only = False
        if self.escaped:
            self.on_other(bytes(_SCRATCH[:nbytes]))
            return
        if self._pending:
            data: bytes | memoryview = self._pending + _SCRATCH[:nbytes]
            self._pending = b""
        else:
            data = _SCRATCH[:nbytes]
        self._split(data)

    def feed(self, data: bytes) -> None:
        """The first bytes, read before framing started: what followed the handshake in its read."""
        if data:
            self._split(data)

    def _split(self, data: bytes | memoryview) -> None:
        """Take the frames of ``data`` apart; keep an incomplete last one for the next read."""
        size, pos = len(data), 0
        while size - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if size - start < 2:
                    break
                (length,) = _U16.unpack_from(data, start)
                start += 2
            elif length == 127:
                if size - start < 8:
                    break
                (length,) = _U64.unpack_from(data, start)
                start += 8
            key = b""
            if b1 & _MASK_BIT:
                if size - start < 4:
                    break
                key = bytes(data[start : start + 4])
                start += 4
            if length > self.max_size or (b1 & _MASK_BIT == _MASK_BIT) != self.masked:
                self._escape(data[pos:])  # websockets says what is wrong and closes
                return
            end = start + length
            if b0 == _FIN_BINARY and not self._in_fragments:
                if end <= size:
                    payload = data[start:end]
                    self.on_message(apply_mask(payload, key) if key else bytes(payload))
                    pos = end
                    continue
                if end - size > DIRECT_READ:  # the rest comes straight into the message's buffer
                    self._payload = buffer = bytearray(length)
                    self._filled = size - start
                    buffer[: self._filled] = data[start:]
                    self._key = key
                    return
                break
            if end > size:
                break  # websockets gets whole frames only
            opcode = b0 & 0x0F
            if opcode in (0x1, 0x2):
                self._in_fragments = not b0 & 0x80
            elif opcode == 0x0 and b0 & 0x80:
                self._in_fragments = False
            if not self.on_other(bytes(data[pos:end])):
                self._escape(data[end:])
                return
            pos = end
        if pos < size:
            self._pending = bytes(data[pos:])

    def _finish_payload(self) -> None:
        payload, key = self._payload, self._key
        assert payload is not None
        self._payload, self._filled, self._key = None, 0, b""
        self._header_only = True
        self.on_message(apply_mask(payload, key) if key else payload)

    def _escape(self, rest: bytes | memoryview) -> None:
        self.escaped = True
        if rest:
            self.on_other(bytes(rest))
