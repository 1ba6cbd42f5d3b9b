"""One WebSocket under one Session: I/O only.

The tunnel feeds the Session every message the WebSocket delivers, hands the
resulting events to the stream endpoints, and writes the frames the Session
queues. Both programs run it; only the role differs: the server opens a
stream per user (``open_stream``), the agent dials its service per OPEN
(``dial_target``). Messages are handled synchronously inside the WebSocket's
read callback — the tunnel never awaits one stream's socket — so a slow user
cannot hold up the others; frames go out through one writer task, in order,
everything queued in one loop turn in one write.
"""

from __future__ import annotations

import asyncio
import logging

from .logfields import fields
from .protocol import CLOSE_PROTOCOL_ERROR, INITIAL_WINDOW, ProtocolError, peek_stream_id
from .service_side import DialTarget, ServiceStream
from .session import (
    CreditGranted,
    DataReceived,
    EndReceived,
    Event,
    OpenConfirmed,
    OpenRefused,
    Role,
    Session,
    StreamOpened,
    StreamReset,
)
from .stats import OpenStats
from .streams import StreamEndpoint
from .user_side import UserStream, WaitingUser
from .wsconnection import (
    Connection,
    ConnectionClosed,
    Message,
    describe_close,
    pause_reading,
    resume_reading,
    wait_closed_or,
    write_frames,
)

log = logging.getLogger("reverse_websockify.tunnel")


class Tunnel:
    def __init__(
        self,
        connection: Connection,
        *,
        role: Role,
        service_id: str,
        window: int = INITIAL_WINDOW,
        max_streams: int = 10000,
        dial_target: DialTarget | None = None,
        open_timeout: float | None = None,
        stats: OpenStats | None = None,
    ) -> None:
        self.connection = connection
        self.service_id = service_id
        self.session = Session(role, window=window, max_streams=max_streams)
        self.loop = asyncio.get_running_loop()  # kept: every get_running_loop() is a getpid() call
        self.closed = False
        self.close_reason = ""
        self.close_code: int | None = None  # the WebSocket close code that ended the tunnel (logs)
        self._dial_target = dial_target
        self._open_timeout = open_timeout
        self._stats = stats if stats is not None else OpenStats()
        self._endpoints: dict[int, StreamEndpoint] = {}
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    @property
    def stream_count(self) -> int:
        return len(self._endpoints)

    # -- server side: a user's connection gets a stream ---------------------------------

    def open_stream(self, user: WaitingUser) -> bool:
        """Give ``user`` a stream (DATA may follow OPEN at once); False at the stream limit."""
        if self.closed:
            return False
        stream_id = self.session.open_stream(user.peer)
        if stream_id is None:
            return False
        stream = UserStream(self.session, stream_id, self.wake, self.service_id, user, loop=self.loop,
                            open_timeout=self._open_timeout, stats=self._stats)
        self._endpoints[stream_id] = stream
        self.wake()
        stream.start_reading()
        return True

    # -- the WebSocket -> the session -> the endpoints ------------------------------------

    def _on_message(self, message: Message) -> None:
        try:
            events = self.session.receive(message)
        except ProtocolError:
            raise
        except Exception:  # a bug: lose one stream, not the tunnel
            self._internal_error(peek_stream_id(message))
            return
        for event in events:
            try:
                self._dispatch(event)
            except Exception:  # a bug or an unexpected socket error: lose one stream, not the tunnel
                self._internal_error(event.stream_id)
        self._forget_ended()
        if self.session.has_output:
            self.wake()

    def _dispatch(self, event: Event) -> None:
        kind = type(event)
        endpoint = self._endpoints.get(event.stream_id)
        if kind is DataReceived:
            if endpoint is not None:
                endpoint.on_data(event.data)  # type: ignore[union-attr]
        elif kind is CreditGranted:
            if endpoint is not None:
                endpoint.on_credit(event.unblocked)  # type: ignore[union-attr]
        elif kind is EndReceived:
            if endpoint is not None:
                endpoint.on_end(event.finished)  # type: ignore[union-attr]
        elif kind is StreamReset:
            if endpoint is not None:
                endpoint.on_reset(event.reason, event.before_open)  # type: ignore[union-attr]
        elif kind is OpenConfirmed:
            if isinstance(endpoint, UserStream):
                endpoint.on_open_ok()
        elif kind is StreamOpened:
            self._accept(event)  # type: ignore[arg-type]
        elif kind is OpenRefused:
            log.warning("service %s stream %d: %d streams open, the limit; refusing", self.service_id,
                        event.stream_id, len(self._endpoints),
                        extra=fields(self.service_id, event.stream_id, reason=event.reason))  # type: ignore[union-attr]

    def _accept(self, event: StreamOpened) -> None:
        """Agent: the server opened a stream; dial the service for it."""
        target = self._dial_target
        if target is None:  # pragma: no cover (the session refuses OPEN on the server)
            raise RuntimeError("OPEN on a tunnel that has no service to dial")
        self._endpoints[event.stream_id] = ServiceStream(self.session, event.stream_id, self.wake, self.service_id,
                                                         event.peer, target, self.loop)

    def _internal_error(self, stream_id: int) -> None:
        log.exception("service %s stream %d: unexpected error; resetting the stream", self.service_id, stream_id,
                      extra=fields(self.service_id, stream_id))
        endpoint = self._endpoints.get(stream_id)
        if endpoint is not None:
            endpoint.abort("internal error", notify_peer=True)
        else:
            self.session.reset(stream_id, "internal error")

    def _forget_ended(self) -> None:
        for stream_id in self.session.ended_streams():
            self._endpoints.pop(stream_id, None)

    # -- the session -> the WebSocket --------------------------------------------------------

    def wake(self) -> None:
        """The session has frames to send: let the writer run (at the end of this loop turn)."""
        self._wakeup.set()

    async def _write_loop(self) -> None:
        """Everything the session queued since the last wake-up goes out in one write."""
        session, wakeup, connection = self.session, self._wakeup, self.connection
        try:
            while True:
                frames = session.data_to_send()
                self._forget_ended()
                if not frames:
                    wakeup.clear()
                    await wakeup.wait()
                    continue
                await write_frames(connection, frames)
        except ConnectionClosed:
            pass

    # -- life and death of the tunnel ------------------------------------------------------

    async def run(self) -> None:
        """Serve the tunnel until the WebSocket closes; then end every stream."""
        self._writer = asyncio.create_task(self._write_loop())
        failed: asyncio.Future[ProtocolError] = self.loop.create_future()

        def deliver(message: Message) -> None:
            if failed.done():
                return  # the WebSocket is being closed for a protocol error: ignore the rest
            try:
                self._on_message(message)
            except ProtocolError as exc:
                failed.set_result(exc)
                pause_reading(self.connection)  # read no more until the close frame is on its way

        try:
            self.connection.deliver_to(deliver)
            await wait_closed_or(self.connection, failed)
            if failed.done():
                await self._close_for_protocol_error(failed.result())
        except ConnectionClosed:
            pass
        finally:
            self._teardown()

    async def _close_for_protocol_error(self, exc: ProtocolError) -> None:
        self.close_reason = f"protocol error: {exc}"
        self.close_code = CLOSE_PROTOCOL_ERROR
        log.warning("service %s: %s; closing the WebSocket (1002)", self.service_id, exc,
                    extra=fields(self.service_id, reason=str(exc), close_code=CLOSE_PROTOCOL_ERROR))
        self._stop_writing()
        closing = asyncio.ensure_future(self.connection.close(CLOSE_PROTOCOL_ERROR, str(exc)[:120]))
        await asyncio.sleep(0)  # the close frame is queued: now read the peer's answer again
        resume_reading(self.connection)
        await closing

    def _stop_writing(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.cancel()

    async def close(self, code: int, reason: str) -> None:
        """Close from our side (replaced by a newer agent, shutdown)."""
        self.close_reason = reason
        self.close_code = code
        self._teardown()
        await self.connection.close(code, reason)

    def _teardown(self) -> None:
        self._stop_writing()
        if not self.close_reason:
            self.close_code, self.close_reason = describe_close(self.connection)
        self.session.close()
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for endpoint in endpoints:
            endpoint.abort(f"tunnel closed ({self.close_reason})", notify_peer=False)
