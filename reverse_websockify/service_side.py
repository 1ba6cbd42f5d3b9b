"""The agent's side of a stream: the connection it dials to the local service.

The stream exists from the server's OPEN on; the dial runs as its own task,
bounded by a timer. Until the dial succeeds, DATA and FIN from the user are
held (within the window: the server may send right after OPEN); then OPEN_OK
goes out, the held bytes are written and the socket is read. A failed or
timed-out dial answers RST with the reason, which the server logs and turns
into a reset of the user's connection.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .errors import describe_error
from .session import Session
from .streams import Outlet, StreamEndpoint, peer_name

log = logging.getLogger("reverse_websockify.stream")


@dataclass(frozen=True)
class DialTarget:
    """Where the agent connects for every stream (``--service``), and how long it may take."""

    host: str
    port: int
    timeout: float = 10.0

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class ServiceStream(StreamEndpoint):
    def __init__(self, session: Session, stream_id: int, outlet: Outlet, service_id: str, user: str,
                 target: DialTarget, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(session, stream_id, outlet, service_id)
        self.user = user  # the user's address as the server reported it in OPEN
        self._pending: list[bytes | memoryview] | None = []  # DATA held while dialling; None once connected
        self._pending_fin = False
        self._dialling = True
        self._dial = loop.create_task(self._connect(target, loop))

    async def _connect(self, target: DialTarget, loop: asyncio.AbstractEventLoop) -> None:
        """Connect to the service, or reset the stream with the reason."""
        # A timer that cancels this task, not asyncio.wait_for: that costs a second task per dial
        # (Python < 3.12), and a dial per user connection is the agent's hot path (bench/, ab -c32).
        task = self._dial
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        timer = loop.call_later(target.timeout, expire)
        try:
            await loop.create_connection(lambda: self, target.host, target.port)
        except asyncio.CancelledError:
            self._dialling = False
            if not expired:
                raise
            self.abort(f"dial {target} timed out after {target.timeout:g} s", notify_peer=True)
        except OSError as exc:
            self._dialling = False
            self.abort(f"dial {target} failed: {describe_error(exc)}", notify_peer=True)
        finally:
            self._dialling = False
            timer.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.transport.pause_reading()  # until the held bytes are out and there is credit
        self.peer = peer_name(transport)
        if self.ended:  # reset while the dial was under way
            transport.abort()
            return
        try:
            self._connected()
        except Exception:  # a bug: the event loop would only log it and leave the user hanging
            log.exception("%s: unexpected error once connected; resetting the stream", self.describe(),
                          extra=self.log_fields())
            self.abort("internal error", notify_peer=True)

    def _connected(self) -> None:
        self.session.confirm_open(self.stream_id)
        self.wake()
        log.info("%s: user %s connected to %s", self.describe(), self.user or "?", self.peer,
                 extra=self.log_fields())
        pending, self._pending = self._pending or [], None
        for data in pending:
            self._write(data)
        if self._pending_fin:
            self._write_eof()  # the user finished sending before the service answered
        self.start_reading()

    def on_data(self, data: bytes | memoryview) -> None:
        if self._pending is not None:
            self.bytes_written += len(data)
            self._pending.append(data)
        else:
            super().on_data(data)

    def on_credit(self, unblocked: bool) -> None:
        if self._pending is None:
            super().on_credit(unblocked)

    def on_end(self, finished: bool) -> None:
        if self._pending is not None:
            self._pending_fin = True
        else:
            super().on_end(finished)

    def _close_abruptly(self) -> None:
        if self._pending is None:
            super()._close_abruptly()
            return
        self._pending = []
        if self._dialling:
            self._dial.cancel()
