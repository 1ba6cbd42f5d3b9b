"""Fake agents and hand-made WebSocket frames, for what a real agent never sends."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct
import time
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from reverse_websockify.protocol import SUBPROTOCOL


async def fake_agent(url: str, **kwargs: Any) -> ClientConnection:
    """A WebSocket client that passes the server's handshake checks like a real agent would."""
    kwargs.setdefault("open_timeout", 10)
    return await connect(url, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
                         user_agent_header="reverse_websockify_agent/fake", **kwargs)


def _upgrade(port: int, path: str, headers: dict[str, str], timeout: float, source: str,
             context: ssl.SSLContext | None = None) -> tuple[socket.socket, bytes, bytes]:
    """Send a WebSocket upgrade by hand from ``source`` (over TLS with ``context``); (socket, head, bytes after it)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
    if context is not None:
        sock = context.wrap_socket(sock)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            f"User-Agent: reverse_websockify_agent/raw\r\n{extra}\r\n"
        ).encode()
    )
    response = bytearray()
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"no HTTP answer: {bytes(response)!r}")
        response.extend(chunk)
    head, _, rest = bytes(response).partition(b"\r\n\r\n")
    return sock, head, rest


def raw_handshake(port: int, path: str, *, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Open a WebSocket by hand (so we can send frames websockets' client would refuse to send)."""
    sock, head, rest = _upgrade(port, path, {}, timeout, "127.0.0.1")
    if not head.startswith(b"HTTP/1.1 101"):
        raise AssertionError(f"handshake refused: {head!r}")
    return sock, rest


def handshake_status(port: int, path: str, headers: dict[str, str], *, source: str = "127.0.0.1",
                     context: ssl.SSLContext | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """The answer to an agent's upgrade with ``headers``, sent from ``source``: (status, body start)."""
    sock, head, rest = _upgrade(port, path, headers, timeout, source, context)
    with sock:
        return int(head.split(b" ", 2)[1]), rest


def masked_frame_header(opcode: int, length: int, *, fin: bool = True) -> tuple[bytes, bytes]:
    """A client-to-server frame header for ``length`` bytes of payload; returns (header, mask key)."""
    first = (0x80 if fin else 0) | opcode
    mask = os.urandom(4)
    if length < 126:
        header = struct.pack(">BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack(">BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack(">BBQ", first, 0x80 | 127, length)
    return header + mask, mask


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    full = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(full, "big")).to_bytes(n, "big") if n else b""


def read_close_code(sock: socket.socket, already: bytes = b"", timeout: float = 5.0) -> int | None:
    """Read server frames until a close frame; return its code (None if the TCP connection just ended)."""
    sock.settimeout(timeout)
    buf = bytearray(already)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        while len(buf) >= 2:
            opcode = buf[0] & 0x0F
            length = buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length = struct.unpack(">H", buf[2:4])[0]
                offset = 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length = struct.unpack(">Q", buf[2:10])[0]
                offset = 10
            if len(buf) < offset + length:
                break
            payload = bytes(buf[offset : offset + length])
            del buf[: offset + length]
            if opcode == 0x8:
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        try:
            chunk = sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return None
        except socket.timeout:
            break
        if not chunk:
            return None
        buf.extend(chunk)
    raise AssertionError(f"no close frame within {timeout} s")
