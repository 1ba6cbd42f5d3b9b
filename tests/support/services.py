"""TCP services on 127.0.0.1 for the agents to dial: an echo and its faulty variants, a blackhole.

One asyncio loop thread per service, so that a single service holds thousands of connections
(the 1,000 idle streams of the benchmark and of the load tests) at no thread per connection.
"""

from __future__ import annotations

import asyncio
import socket
import time

from tests.support.loops import LoopThread, set_rst_on_close


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
