"""Local helpers for the reliability tests: services, process probes, raw clients, fake agents."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from reverse_websockify.protocol import SUBPROTOCOL
from tests.reliability.faultproxy import LoopThread, set_rst_on_close

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- process probes (Linux /proc) ------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (harness.free_port() may repeat itself)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -- user-side socket helpers ------------------------------------------------------------------


def read_until_closed(user: socket.socket, seconds: float) -> tuple[float, str, bytes]:
    """Read until EOF or reset; return (seconds it took, "eof" or "reset", the bytes read).

    Raises AssertionError if the connection is still open after ``seconds``: no user hangs forever.
    """
    user.settimeout(seconds)
    started = time.monotonic()
    deadline = started + seconds
    data = bytearray()
    try:
        while True:
            user.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = user.recv(1 << 20)
            if not chunk:
                return time.monotonic() - started, "eof", bytes(data)
            data.extend(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - started, "reset", bytes(data)
    except socket.timeout:
        raise AssertionError(f"user connection still open after {seconds} s") from None


def still_open(user: socket.socket, seconds: float) -> bool:
    """True if nothing happened on ``user`` (no EOF, no reset, no data) for ``seconds``."""
    user.settimeout(seconds)
    try:
        user.recv(1)  # data, EOF or an error: something happened
    except socket.timeout:
        return True
    except OSError:
        return False
    return False


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- a local TCP service with modes, on its own event loop ----------------------------------------


class _ServiceConn(asyncio.Protocol):
    def __init__(self, service: Service) -> None:
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.eof = False
        self.closed_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.service.accepted += 1
        self.service.open.add(self)
        if self.service.greeting:
            self.transport.write(self.service.greeting)  # type: ignore[union-attr]
        if self.service.mode == "greet_then_reset":
            asyncio.get_running_loop().call_later(self.service.reset_delay, self._reset)

    def _reset(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.service.resets += 1
            set_rst_on_close(self.transport)
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        service, transport = self.service, self.transport
        assert transport is not None
        self.received += len(data)
        service.bytes_received += len(data)
        if service.mode == "echo":
            transport.write(data)
        elif service.mode == "reset_after":
            transport.write(data)
            if self.received >= service.reset_after:
                service.resets += 1
                set_rst_on_close(transport)
                transport.abort()
        # "silent": read and discard, never answer

    def eof_received(self) -> bool:
        self.eof = True
        if self.service.mode == "echo":
            return False  # asyncio closes after the write buffer drained: FIN back
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_at = time.monotonic()
        self.service.open.discard(self)
        self.service.closed += 1

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()


class Service:
    """A TCP service on 127.0.0.1 running on its own loop thread.

    mode "echo": echo everything, then close after the peer's FIN (the usual test service);
    mode "reset_after": echo, and reset (RST) the connection after ``reset_after`` bytes;
    mode "silent": accept, read and discard, never answer, never close by itself;
    mode "greet_then_reset": send ``greeting``, then reset (RST) after ``reset_delay`` seconds.
    """

    def __init__(self, mode: str = "echo", *, reset_after: int = 0, greeting: bytes = b"", reset_delay: float = 0.5,
                 backlog: int = 4096) -> None:
        self.mode = mode
        self.reset_after = reset_after
        self.reset_delay = reset_delay
        self.greeting = greeting
        self.accepted = 0
        self.closed = 0
        self.resets = 0
        self.bytes_received = 0
        self.open: set[_ServiceConn] = set()
        self._loop = LoopThread(f"service-{mode}")
        self._server: asyncio.AbstractServer | None = None
        self.port = self._loop.run(self._start(backlog))

    async def _start(self, backlog: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServiceConn(self), "127.0.0.1", 0, backlog=backlog)
        return self._server.sockets[0].getsockname()[1]

    def open_count(self) -> int:
        return self._loop.call(lambda: len(self.open))

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for conn in list(self.open):
                if conn.transport is not None:
                    conn.transport.abort()

        try:
            self._loop.run(shut(), 10)
        except Exception:  # noqa: BLE001 — teardown
            pass
        self._loop.stop()


class Blackhole:
    """A listening socket whose accept queue is full: further SYNs are dropped, dials hang.

    On loopback this stands in for an unreachable address (a host that drops packets).
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(16):
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", self.port))
            except OSError:
                probe.close()
                break
            self.fillers.append(probe)
        else:
            raise AssertionError("could not fill the accept queue of the blackhole listener")

    def dial_hangs(self, seconds: float = 0.5) -> bool:
        with socket.socket() as probe:
            probe.settimeout(seconds)
            try:
                probe.connect(("127.0.0.1", self.port))
            except socket.timeout:
                return True
            except OSError:
                return False
            return False

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


# -- fake agents and raw WebSocket ---------------------------------------------------------------


async def fake_agent(url: str, **kwargs: Any) -> ClientConnection:
    """A WebSocket client that passes the server's handshake checks like a real agent would."""
    kwargs.setdefault("open_timeout", 10)
    return await connect(url, subprotocols=[SUBPROTOCOL], compression=None,  # type: ignore[list-item]
                         user_agent_header="reverse_websockify_agent/fake", **kwargs)


def raw_handshake(port: int, path: str, *, timeout: float = 5.0) -> tuple[socket.socket, bytes]:
    """Open a WebSocket by hand (so we can send frames websockets' client would refuse to send)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n"
            "User-Agent: reverse_websockify_agent/raw\r\n\r\n"
        ).encode()
    )
    response = bytearray()
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"handshake refused: {bytes(response)!r}")
        response.extend(chunk)
    head, _, rest = bytes(response).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise AssertionError(f"handshake refused: {head!r}")
    return sock, rest


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


# -- echo exchanges that may be interrupted ------------------------------------------------------


class Exchange:
    """One user sending ``payload`` to an echo through the tunnel (paced), reading back what it can.

    Runs in two threads; ``join()`` returns once the connection is closed or ``timeout`` passes.
    ``outcome``: "complete" (EOF after every byte came back), "eof" or "reset" (cut short),
    or "hung" (still open at the timeout: a failure in every test).
    """

    def __init__(self, port: int, payload: bytes, *, chunk: int = 64 * 1024, pace: float = 0.0,
                 timeout: float = 60.0) -> None:
        self.payload = payload
        self.received = bytearray()
        self.outcome = "running"
        self.closed_at: float | None = None
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(timeout)
        self._chunk, self._pace = chunk, pace
        self._writer = threading.Thread(target=self._write, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._writer.start()

    def _write(self) -> None:
        view = memoryview(self.payload)
        try:
            for i in range(0, len(view), self._chunk):
                self.sock.sendall(view[i : i + self._chunk])
                if self._pace:
                    time.sleep(self._pace)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader reports how the connection ended

    def _read(self) -> None:
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    self.outcome = "complete" if len(self.received) == len(self.payload) else "eof"
                    break
                self.received.extend(chunk)
        except socket.timeout:
            self.outcome = "hung"
        except OSError:
            self.outcome = "reset"
        self.closed_at = time.monotonic()

    def join(self, timeout: float | None = None) -> str:
        self._reader.join(timeout if timeout is not None else self.timeout + 5)
        self._writer.join(5)
        self.sock.close()
        if self._reader.is_alive():
            self.outcome = "hung"
        return self.outcome

    def intact(self) -> bool:
        """What came back is exactly the start of what was sent: no byte lost, changed or repeated."""
        return bytes(self.received) == self.payload[: len(self.received)]
