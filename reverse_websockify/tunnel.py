"""One session's streams over a WebSocket: I/O only.

The tunnel feeds the Session every message the WebSocket delivers, hands the
resulting events to the stream endpoints, and writes the frames the Session
queues. Both programs run it; only the role differs: the server opens a
stream per user (``open_stream``), the agent dials its service per OPEN
(``dial_target``). Messages are handled synchronously inside the WebSocket's
read callback — the tunnel never awaits one stream's socket — so a slow user
cannot hold up the others; frames go out through one writer task, in order,
everything queued in one loop turn in one write.

With protocol v2 a tunnel outlives its WebSocket: when the link is lost
(rather than closed on purpose) ``run`` returns True and the tunnel stays
*detached* — sockets open, streams paused by their credit — until ``run`` is
called again with a new WebSocket (the session resumes) or ``close`` /
``expire`` ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

from .flow import DEFAULT_BUDGET, IDLE_SECONDS
from .logfields import fields
from .protocol import (
    CLOSE_ABNORMAL,
    CLOSE_PROTOCOL_ERROR,
    INITIAL_WINDOW,
    ProtocolError,
    peek_stream_id,
)
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
    SessionResumed,
    SessionStarted,
    StreamOpened,
    StreamReset,
)
from .stats import ServiceStats
from .streams import Outlet, StreamEndpoint
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

LINK_LOST = (None, CLOSE_ABNORMAL, 1011)
"""Close codes of a link that was lost rather than closed on purpose: no close frame from the
peer (1006), or our own keepalive giving up (1011). A v2 session survives these."""

WRITTEN_POLL = 0.01
"""How often the confirmation loop looks whether the frames before its ping have been written."""

CONFIRM_INTERVAL = 1.0
"""How often finished streams are confirmed with a ping (see Session.mark), when there are any."""

SAMPLE_GAP = 0.02
"""Between two round-trip samples of the window tuner (flow.WindowTuner), while data flows."""


async def write_session(session: Session, wakeup: asyncio.Event, connection: Connection,
                        after_taking: Callable[[], None] = lambda: None) -> None:
    """Everything the session queued since the last wake-up goes out in one write, until the link closes."""
    try:
        while True:
            frames = session.data_to_send()
            after_taking()
            if not frames:
                wakeup.clear()
                await wakeup.wait()
                continue
            await write_frames(connection, frames)
    except ConnectionClosed:
        pass


class Tunnel:
    def __init__(
        self,
        *,
        role: Role,
        service_id: str,
        version: int = 1,
        window: int = INITIAL_WINDOW,
        max_streams: int = 10000,
        dial_target: DialTarget | None = None,
        open_timeout: float | None = None,
        stats: ServiceStats | None = None,
        receive_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.service_id = service_id
        self.session = Session(role, window=window, max_streams=max_streams, version=version, budget=receive_budget)
        self.loop = asyncio.get_running_loop()  # kept: every get_running_loop() is a getpid() call
        self.connection: Connection | None = None  # the WebSocket carrying the session now
        self.closed = False  # ended for good: every stream is gone
        self.detached_since: float | None = None  # time.time() when the link was lost (v2)
        self.close_reason = ""  # why the last WebSocket ended
        self.close_code: int | None = None
        self.stats = stats if stats is not None else ServiceStats()
        self._dial_target = dial_target
        self._open_timeout = open_timeout
        self._endpoints: dict[int, StreamEndpoint] = {}
        self._wakeup = asyncio.Event()
        self._outlet = Outlet(self._wakeup.set)
        self._flow_data = asyncio.Event()  # DATA arrived while the flow task waited for an idle check
        self._flow_waiting = False
        # Tasks of the current link. The flow and confirmation tasks run only while they have work
        # (an idle fleet of 8,000 tunnels would otherwise hold 16,000 sleeping tasks: memory, and
        # objects for every full garbage collection to walk).
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._flow_task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None
        self._lost_at = 0.0  # time.monotonic() when the link was lost, for the resume's log line
        self._resuming = False

    @property
    def stream_count(self) -> int:
        return len(self._endpoints)

    @property
    def attached(self) -> bool:
        return self.connection is not None and not self.closed

    # -- server side: a user's connection gets a stream ---------------------------------

    def open_stream(self, user: WaitingUser) -> bool:
        """Give ``user`` a stream (DATA may follow OPEN at once); False at the stream limit."""
        if self.closed:
            return False
        stream_id = self.session.open_stream(user.peer)
        if stream_id is None:
            return False
        stream = UserStream(self.session, stream_id, self._outlet, self.service_id, user, loop=self.loop,
                            open_timeout=self._open_timeout, stats=self.stats)
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
                self._internal_error(event.stream_id if hasattr(event, "stream_id") else 0)
        self._forget_ended()
        if self.session.has_output:
            self.wake()
        if self.session.tuner.dirty:
            if self._flow_task is None:
                self._flow_task = self._start_link_task(self._flow_loop)
            elif self._flow_waiting:
                self._flow_waiting = False
                self._flow_data.set()

    def _dispatch(self, event: Event) -> None:
        kind = type(event)
        if kind is DataReceived:
            endpoint = self._endpoints.get(event.stream_id)  # type: ignore[union-attr]
            if endpoint is not None:
                endpoint.on_data(event.data)  # type: ignore[union-attr]
        elif kind is CreditGranted:
            endpoint = self._endpoints.get(event.stream_id)  # type: ignore[union-attr]
            if endpoint is not None:
                endpoint.on_credit(event.unblocked)  # type: ignore[union-attr]
        elif kind is EndReceived:
            endpoint = self._endpoints.get(event.stream_id)  # type: ignore[union-attr]
            if endpoint is not None:
                endpoint.on_end(event.finished)  # type: ignore[union-attr]
        elif kind is StreamReset:
            endpoint = self._endpoints.get(event.stream_id)  # type: ignore[union-attr]
            if endpoint is not None:
                endpoint.on_reset(event.reason, event.before_open)  # type: ignore[union-attr]
        elif kind is OpenConfirmed:
            endpoint = self._endpoints.get(event.stream_id)  # type: ignore[union-attr]
            if isinstance(endpoint, UserStream):
                endpoint.on_open_ok()
        elif kind is StreamOpened:
            self._accept(event)  # type: ignore[arg-type]
        elif kind is OpenRefused:
            log.warning("service %s stream %d: %d streams open, the limit; refusing", self.service_id,
                        event.stream_id, len(self._endpoints),  # type: ignore[union-attr]
                        extra=fields(self.service_id, event.stream_id, reason=event.reason))  # type: ignore[union-attr]
        elif kind is SessionResumed:
            self._resumed(event)  # type: ignore[arg-type]
        elif kind is SessionStarted and self._resuming:
            self._resuming = False
            log.warning("service %s: %s; its streams were reset", self.service_id,
                        "the server could not resume the session (it expired or the server restarted)",
                        extra=fields(self.service_id, reason="session not resumed"))

    def _accept(self, event: StreamOpened) -> None:
        """Agent: the server opened a stream; dial the service for it."""
        target = self._dial_target
        if target is None:  # pragma: no cover (the session refuses OPEN on the server)
            raise RuntimeError("OPEN on a tunnel that has no service to dial")
        self._endpoints[event.stream_id] = ServiceStream(self.session, event.stream_id, self._outlet, self.service_id,
                                                         event.peer, target, self.loop)

    def _resumed(self, event: SessionResumed) -> None:
        self._resuming = False
        stats = self.stats
        stats.sessions_resumed += 1
        stats.streams_resumed += event.streams
        stats.bytes_retransmitted += event.retransmitted
        log.info("service %s: session resumed after %.1f s: %d streams kept, %d bytes sent again",
                 self.service_id, time.monotonic() - self._lost_at, event.streams, event.retransmitted,
                 extra=fields(self.service_id, reason="resumed"))

    def _internal_error(self, stream_id: int) -> None:
        log.exception("service %s stream %d: unexpected error; resetting the stream", self.service_id, stream_id,
                      extra=fields(self.service_id, stream_id))
        endpoint = self._endpoints.get(stream_id)
        if endpoint is not None:
            endpoint.abort("internal error", notify_peer=True)
        else:
            self.session.reset(stream_id, "internal error")

    def _forget_ended(self) -> None:
        """Ended streams leave the endpoint table; finished ones (v2) start the confirmation task."""
        session = self.session
        for stream_id in session.ended_streams():
            self._endpoints.pop(stream_id, None)
        if session.finished_unconfirmed and self._confirm_task is None and self.connection is not None:
            self._confirm_task = self._start_link_task(self._confirm_loop)

    def _start_link_task(self, loop_of: Callable[[Connection], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        assert self.connection is not None
        task = self.loop.create_task(loop_of(self.connection))
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)
        return task

    # -- the session -> the WebSocket --------------------------------------------------------

    def wake(self) -> None:
        """The session has frames to send: let the writer run (at the end of this loop turn)."""
        self._wakeup.set()

    async def _write_loop(self, connection: Connection) -> None:
        await write_session(self.session, self._wakeup, connection, self._after_taking)

    def _after_taking(self) -> None:
        self._forget_ended()
        self._outlet.release()

    async def _confirm_loop(self, connection: Connection) -> None:
        """Let finished streams go once a pong proves the peer processed their last frames (v2).

        Runs while some finished stream waits (``_forget_ended`` starts it), confirming at most once
        per ``CONFIRM_INTERVAL`` so that streams finishing together share one ping.
        """
        session = self.session
        try:
            while session.finished_unconfirmed:
                await asyncio.sleep(CONFIRM_INTERVAL)
                if session.can_confirm:  # not while a resume is being settled
                    mark = session.mark()
                    await self._wait_written()
                    pong = await connection.ping()
                    await pong
                    session.peer_caught_up(mark)
        except ConnectionClosed:
            pass
        finally:
            if self._confirm_task is asyncio.current_task():  # not a newer link's
                self._confirm_task = None

    async def _flow_loop(self, connection: Connection) -> None:
        """Time the round trips the window tuner samples (a ping and its pong), and run its idle checks.

        Runs while the tuner has work: samples while DATA flows, idle checks while some window may
        shrink; then it ends, and the next DATA starts it again (``_on_message``).
        """
        session, loop, idle_data = self.session, self.loop, self._flow_data
        tuner = session.tuner
        next_idle = loop.time() + IDLE_SECONDS
        try:
            while True:
                if tuner.dirty:
                    session.flow_sample_begin()
                    sent_at = time.perf_counter()  # uvloop's loop.time() counts whole milliseconds
                    pong = await connection.ping()
                    await pong
                    if session.flow_sample_end(time.perf_counter() - sent_at):
                        self.wake()
                    await asyncio.sleep(SAMPLE_GAP)
                elif tuner.has_idle_work:
                    idle_data.clear()
                    self._flow_waiting = True
                    try:
                        await asyncio.wait_for(idle_data.wait(), max(0.0, next_idle - loop.time()))
                    except asyncio.TimeoutError:
                        pass
                    finally:
                        self._flow_waiting = False
                else:
                    return  # nothing to time, nothing to shrink
                if loop.time() >= next_idle:
                    next_idle = loop.time() + IDLE_SECONDS
                    if session.flow_idle():
                        self.wake()
        except ConnectionClosed:
            pass
        finally:
            if self._flow_task is asyncio.current_task():  # not a newer link's
                self._flow_task = None
                self._flow_waiting = False

    async def _wait_written(self) -> None:
        """Until the frames queued now are handed to the WebSocket (the ping must follow them).

        Polled, not spun: while the writer waits for a full socket this would otherwise take a
        loop turn of its own each time round, on the relay's busiest moments.
        """
        while self.session.has_output:
            await asyncio.sleep(WRITTEN_POLL)

    # -- life and death ----------------------------------------------------------------------

    async def run(self, connection: Connection) -> bool:
        """Carry the session over ``connection`` until it ends.

        Returns True when the session outlives it (v2, link lost, or a newer link took over),
        False when the tunnel has ended with it.
        """
        if self.closed:
            raise RuntimeError("the tunnel has ended")
        self.connection = connection
        self.detached_since = None
        self._resuming = self.session.hello is not None and self.session.role == "agent"
        self.session.flow_new_link()
        self._start_link_task(self._write_loop)
        self._forget_ended()  # streams finished before a lost link still wait for confirmation
        failed: asyncio.Future[ProtocolError] = self.loop.create_future()

        def deliver(message: Message) -> None:
            if failed.done() or self.connection is not connection:
                return  # being closed for a protocol error, or replaced by a newer link
            try:
                self._on_message(message)
            except ProtocolError as exc:
                failed.set_result(exc)
                pause_reading(connection)  # read no more until the close frame is on its way

        protocol_error = False
        try:
            connection.deliver_to(deliver)
            await wait_closed_or(connection, failed)
            if failed.done():
                protocol_error = True
                await self._close_for_protocol_error(connection, failed.result())
        except ConnectionClosed:
            pass
        if self.connection is not connection:
            return not self.closed  # a newer link took over (see take_over), or close() ended it all
        self._drop_link()
        if not protocol_error:
            self.close_code, self.close_reason = describe_close(connection)
        if self.session.resumable and not protocol_error and self.close_code in LINK_LOST:
            self.session.detach()
            self.detached_since = time.time()
            self._lost_at = time.monotonic()
            return True
        self._teardown()
        return False

    def take_over(self) -> Connection | None:
        """Server: the agent resumed on a new WebSocket while the old one looks alive; detach from it.

        Returns the old connection, for the caller to close.
        """
        old = self.connection
        if old is not None:
            self._drop_link()
            self.session.detach()
            self._lost_at = time.monotonic()
        return old

    def _drop_link(self) -> None:
        for task in list(self._link_tasks):
            task.cancel()
        self._link_tasks.clear()
        self._flow_task = self._confirm_task = None
        self.connection = None

    async def _close_for_protocol_error(self, connection: Connection, exc: ProtocolError) -> None:
        self.close_reason = f"protocol error: {exc}"
        self.close_code = CLOSE_PROTOCOL_ERROR
        log.warning("service %s: %s; closing the WebSocket (1002)", self.service_id, exc,
                    extra=fields(self.service_id, reason=str(exc), close_code=CLOSE_PROTOCOL_ERROR))
        for task in list(self._link_tasks):
            task.cancel()
        closing = asyncio.ensure_future(connection.close(CLOSE_PROTOCOL_ERROR, str(exc)[:120]))
        await asyncio.sleep(0)  # the close frame is queued: now read the peer's answer again
        resume_reading(connection)
        await closing

    async def close(self, code: int, reason: str) -> None:
        """End the tunnel on purpose (shutdown, replaced by another agent): streams end, the peer is told."""
        self.close_reason = reason
        self.close_code = code
        connection = self.connection
        self._teardown()
        if connection is not None:
            await connection.close(code, reason)

    def expire(self, reason: str) -> None:
        """End a detached tunnel whose link did not come back in time."""
        self.close_reason = reason
        self._teardown()

    def _teardown(self) -> None:
        self._drop_link()
        self.closed = True
        self.detached_since = None
        self.session.close()
        endpoints = list(self._endpoints.values())
        self._endpoints.clear()
        for endpoint in endpoints:
            endpoint.abort(f"tunnel closed ({self.close_reason})", notify_peer=False)
