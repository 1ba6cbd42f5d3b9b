"""A fault-injecting TCP proxy for the reliability tests.

Placed between an agent and the server (the agent's --reverse-websockify URL
points at the proxy, which forwards to the server's HTTP port), it emulates
what a cellular or corporate link does to a long-lived connection:

* ``forward()``  relay bytes both ways (the default); also ends a freeze or a refusal;
* ``freeze()``   stop relaying but keep every socket open, like a link that went
                 silent: nothing is read, nothing is written, no FIN, no RST. New
                 connections are accepted and held, silent, until the link is back,
                 then they are connected upstream and relayed (like SYNs that get
                 through once the radio is back);
* ``cut(rst=True)`` close both sides of every current connection at once, with RST
                 (SO_LINGER 0) or with a FIN; the mode is unchanged, so with
                 ``forward`` a reconnect goes through at once;
* ``refuse()``   close the listening socket: new connections are refused (RST to the
                 SYN) until ``forward()`` listens again on the same port.

Everything runs on an asyncio loop in a daemon thread; the control methods are
called from the test's thread and return once the change is in effect.
"""

from __future__ import annotations

import asyncio

from tests.support.loops import LoopThread, set_rst_on_close


class _Side(asyncio.Protocol):
    """One socket of a proxied connection: 'down' (the agent's) or 'up' (to the server)."""

    def __init__(self, pair: _Pair, name: str) -> None:
        self.pair = pair
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.reading_paused = False  # by the proxy: freeze or backpressure
        self.peer_full = False  # the other side's write buffer is above its high-water mark
        self.early: list[bytes] = []  # bytes read before the other side exists (never while frozen)
        self.early_eof = False

    @property
    def other(self) -> _Side | None:
        return self.pair.up if self is self.pair.down else self.pair.down

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pair.proxy._sync_reading(self)

    def data_received(self, data: bytes) -> None:
        other = self.other
        self.pair.proxy.bytes_forwarded += len(data)
        if other is None or other.transport is None:
            self.early.append(data)
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        other = self.other
        if other is None or other.transport is None:
            self.early_eof = True
            return True
        if other.transport.can_write_eof() and not other.transport.is_closing():
            other.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.lost(self, exc)

    def pause_writing(self) -> None:
        other = self.other
        if other is not None:
            other.peer_full = True
            self.pair.proxy._sync_reading(other)

    def resume_writing(self) -> None:
        other = self.other
        if other is not None:
            other.peer_full = False
            self.pair.proxy._sync_reading(other)


class _Pair:
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.down = _Side(self, "down")
        self.up: _Side | None = None
        self.closed = False
        self.connecting: asyncio.Task[None] | None = None

    async def connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        up = _Side(self, "up")
        try:
            await loop.create_connection(lambda: up, self.proxy.upstream_host, self.proxy.upstream_port)
        except OSError:
            self.abort(rst=True)  # the agent sees its connection reset, as if the server were down
            return
        if self.closed:
            assert up.transport is not None
            up.transport.abort()
            return
        self.up = up
        down = self.down
        for data in down.early:
            up.transport.write(data)  # type: ignore[union-attr]
        down.early.clear()
        if down.early_eof and up.transport is not None and up.transport.can_write_eof():
            up.transport.write_eof()
        self.proxy._sync_reading(down)
        self.proxy._sync_reading(up)

    def lost(self, side: _Side, exc: Exception | None) -> None:
        other = side.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            if self.proxy.mode == "freeze":
                return  # a frozen link does not pass the close on; it shows once the link is back
            if exc is not None:
                set_rst_on_close(other.transport)  # pass a reset on as a reset
                other.transport.abort()
            else:
                other.transport.close()
        if other is None or other.transport is None or other.transport.is_closing():
            self.closed = True
            self.proxy.pairs.discard(self)
            if self.connecting is not None and not self.connecting.done():
                self.connecting.cancel()

    def abort(self, *, rst: bool) -> None:
        self.closed = True
        self.proxy.pairs.discard(self)
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        for side in (self.down, self.up):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                if rst:
                    set_rst_on_close(side.transport)
                side.transport.abort()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose link can be frozen, cut or refused while the test runs."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.mode = "forward"
        self.pairs: set[_Pair] = set()
        self.accepted = 0  # connections accepted in total
        self.bytes_forwarded = 0
        self._server: asyncio.AbstractServer | None = None
        self._thread = LoopThread("faultproxy")
        self.port = 0
        self._thread.run(self._listen())

    # -- control, from the test's thread -----------------------------------------------

    @property
    def url_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def forward(self) -> None:
        self._thread.run(self._set_forward())

    def freeze(self) -> None:
        self._thread.call(self._set_mode, "freeze")

    def cut(self, *, rst: bool = True) -> int:
        """Abort every current connection (both sides); return how many were cut."""
        return self._thread.call(self._cut, rst)

    def refuse(self) -> None:
        self._thread.run(self._set_refuse())

    def connection_count(self) -> int:
        return self._thread.call(lambda: len(self.pairs))

    def close(self) -> None:
        try:
            self._thread.call(self._cut, True)
            self._thread.run(self._close_listener())
        except Exception:  # noqa: BLE001 — teardown
            pass
        self._thread.stop()

    # -- on the loop --------------------------------------------------------------------------

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, "127.0.0.1", self.port, reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _accept(self) -> _Side:
        self.accepted += 1
        pair = _Pair(self)
        self.pairs.add(pair)
        if self.mode != "freeze":
            pair.connecting = asyncio.get_running_loop().create_task(pair.connect_upstream())
        return pair.down

    def _sync_reading(self, side: _Side) -> None:
        transport = side.transport
        if transport is None or transport.is_closing():
            return
        pause = self.mode == "freeze" or side.peer_full
        if pause and not side.reading_paused:
            transport.pause_reading()
            side.reading_paused = True
        elif not pause and side.reading_paused:
            transport.resume_reading()
            side.reading_paused = False

    def _all_sides(self) -> list[_Side]:
        sides = []
        for pair in list(self.pairs):
            sides.append(pair.down)
            if pair.up is not None:
                sides.append(pair.up)
        return sides

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        for side in self._all_sides():
            self._sync_reading(side)

    async def _set_forward(self) -> None:
        if self._server is None:
            await self._listen()
        self._set_mode("forward")
        loop = asyncio.get_running_loop()
        for pair in list(self.pairs):
            if pair.up is None and (pair.connecting is None or pair.connecting.done()) and not pair.closed:
                pair.connecting = loop.create_task(pair.connect_upstream())
            elif pair.up is not None:
                # a close that happened while frozen is passed on now
                for side in (pair.down, pair.up):
                    if side.transport is not None and side.transport.is_closing():
                        pair.lost(side, None)

    async def _set_refuse(self) -> None:
        self.mode = "refuse"
        await self._close_listener()
        for side in self._all_sides():
            self._sync_reading(side)

    def _cut(self, rst: bool) -> int:
        pairs = list(self.pairs)
        for pair in pairs:
            pair.abort(rst=rst)
        return len(pairs)
