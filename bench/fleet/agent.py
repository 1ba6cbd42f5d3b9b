"""One simulated agent: the real agent's connection and session rules, with an echo service inside.

What it shares with ``reverse_websockify_agent_service_side`` (imported, not rewritten): the
handshake options (``connection_options``: subprotocols v2 then v1, no compression, the size
limit, keepalive pings — websockets answers the server's pings), the User-Agent, the connection
class that hands each message over in the read callback (``DirectClientConnection``), the batched
frame writer (``write_session``), the backoff with jitter (``backoff_delays``), the "retry at once
after a lost link" rule (``AT_ONCE_AFTER``, ``LINK_LOST``), the session resume header, and the
whole stream table with flow control (``Session``, protocol v1 and v2). What it leaves out: TLS,
proxies, dialing a TCP service (an OPEN is answered in-process: every byte comes back, FIN for
FIN), the window tuner's round-trip sampling (windows stay at the protocol's initial 1 MiB), and
logging (the fleet counts instead).
"""

from __future__ import annotations

import asyncio
import errno
import time
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from reverse_websockify.agent import AT_ONCE_AFTER, USER_AGENT, backoff_delays
from reverse_websockify.protocol import MAX_DATA, RESUME_HEADER, VERSIONS, ProtocolError, CLOSE_PROTOCOL_ERROR
from reverse_websockify.session import (
    CreditGranted,
    DataReceived,
    EndReceived,
    SessionStarted,
    StreamOpened,
    StreamReset,
    Session,
)
from reverse_websockify.tunnel import LINK_LOST, write_session
from reverse_websockify.wsconnection import (
    ConnectionClosed,
    DirectClientConnection,
    connection_options,
    describe_close,
    wait_closed_or,
)

if TYPE_CHECKING:
    from bench.fleet.fleet import Fleet

# states
WAITING = "waiting"  # not started yet, or backing off
CONNECTING = "connecting"
ATTACHED = "attached"
STOPPED = "stopped"


def failure_reason(exc: BaseException) -> str:
    """A short, countable reason for a failed connection attempt."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "handshake timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno is not None:
        return {errno.EMFILE: "out of file descriptors (EMFILE)", errno.ENFILE: "out of file descriptors (ENFILE)",
                errno.EADDRNOTAVAIL: "no local port left (EADDRNOTAVAIL)", errno.ECONNRESET: "connection reset",
                }.get(exc.errno, f"{type(exc).__name__} errno {exc.errno}")
    if isinstance(exc, InvalidHandshake):
        return f"handshake: {type(exc).__name__}"
    if isinstance(exc, ConnectionClosed):
        return "closed during the handshake"
    return type(exc).__name__


class SimAgent:
    def __init__(self, fleet: Fleet, service_id: str, url: str) -> None:
        self.fleet = fleet
        self.service_id = service_id
        self.url = url
        self.state = WAITING
        self.attempts = 0
        self.attaches = 0
        self.attached_at: float | None = None  # time.monotonic() of the current attach
        self.last_failure = ""
        self.last_close = ""
        self.session: Session | None = None
        self._lost_at = 0.0
        self._pending: dict[int, bytearray] = {}  # echo bytes waiting for credit
        self._fin_pending: set[int] = set()  # FIN to send once the pending bytes are out
        self._wakeup = asyncio.Event()
        self._confirming = False
        self._connection: DirectClientConnection | None = None

    # -- the connection loop: the real agent's run_forever, without the logging --------------

    def _connect(self) -> connect:
        o = self.fleet.options
        headers = {}
        if o.token:
            headers["Authorization"] = f"Bearer {o.token}"
        session = self.session
        if session is not None and not session.closed and session.hello is not None:
            headers[RESUME_HEADER] = f"{session.hello.session_id.hex()}.{session.hello.secret.hex()}"
        return connect(self.url, **connection_options(ping_interval=o.ping_interval, ping_timeout=o.ping_timeout,
                                                      open_timeout=o.open_timeout),
                       user_agent_header=USER_AGENT, additional_headers=headers,
                       create_connection=DirectClientConnection, proxy=None)

    async def run(self) -> None:
        o = self.fleet.options
        delays = backoff_delays(o.backoff_initial, o.backoff_max)
        while not self.fleet.stopping:
            self._expire_session()
            started = time.monotonic()
            self.state = CONNECTING
            self.attempts += 1
            try:
                async with self.fleet.handshake_slot():
                    connection = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — every failure is counted by its reason
                self.last_failure = failure_reason(exc)
                self.fleet.failed(self, self.last_failure)
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (HTTPStatus.FORBIDDEN,
                                                                                   HTTPStatus.CONFLICT):
                    self._give_up_session()
            else:
                delays = backoff_delays(o.backoff_initial, o.backoff_max)  # connected: start over
                kept = await self._serve(connection)
                if self.fleet.stopping:
                    break
                if kept and time.monotonic() - started >= AT_ONCE_AFTER:
                    continue  # the link was lost with a session to resume: try again at once
            self.state = WAITING
            if await self.fleet.sleep(next(delays)):
                break
        self.state = STOPPED

    def _expire_session(self) -> None:
        """A detached session older than the server's resume_seconds is given up (the real agent's timer)."""
        session = self.session
        if session is not None and session.hello is not None and self.state != ATTACHED and self._lost_at and \
                time.monotonic() - self._lost_at > session.hello.resume_seconds:
            self._give_up_session()

    def _give_up_session(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
        self._pending.clear()
        self._fin_pending.clear()

    async def _serve(self, connection: DirectClientConnection) -> bool:
        """Relay over ``connection`` until it ends; True when the session is kept to resume (v2, link lost)."""
        version = VERSIONS.get(connection.subprotocol or "", 1)
        session = self.session
        if session is None or session.closed or session.version != version:
            self._give_up_session()
            session = self.session = Session("agent", version=version)
        session.flow_new_link()
        self._connection = connection
        failed: asyncio.Future[ProtocolError] = asyncio.get_running_loop().create_future()
        if version == 1:
            self._attached()

        def deliver(message: bytes | bytearray | memoryview | str) -> None:
            if failed.done():
                return
            if self.state != ATTACHED:
                self._attached()  # v2: the server's HELLO, its first frame, says the session is ours
            try:
                self._on_message(session, message)
            except ProtocolError as exc:
                failed.set_result(exc)

        writer = asyncio.ensure_future(write_session(session, self._wakeup, connection))
        try:
            connection.deliver_to(deliver)
            await wait_closed_or(connection, failed)
            if failed.done():
                self.fleet.protocol_errors[str(failed.result())[:100]] += 1
                await connection.close(CLOSE_PROTOCOL_ERROR, str(failed.result())[:120])
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            self._connection = None
        code, why = describe_close(connection)
        if failed.done():
            code, why = CLOSE_PROTOCOL_ERROR, f"protocol error: {failed.result()}"
        was_attached = self.state == ATTACHED
        self.last_close = why
        self.state = WAITING
        self.fleet.detached(self, was_attached, f"{code} {why}" if code is not None else why)
        if session.resumable and not failed.done() and code in LINK_LOST and session.hello is not None:
            session.detach()
            self._lost_at = time.monotonic()
            return True
        self._give_up_session()
        return False

    def _attached(self) -> None:
        self.state = ATTACHED
        self.attaches += 1
        self.attached_at = time.monotonic()
        self.fleet.attached(self)

    # -- the session and the in-process echo service ------------------------------------------

    def _on_message(self, session: Session, message: bytes | bytearray | memoryview | str) -> None:
        pending, fins = self._pending, self._fin_pending
        for event in session.receive(message):
            kind = type(event)
            if kind is DataReceived:
                sid = event.stream_id  # type: ignore[union-attr]
                data = event.data  # type: ignore[union-attr]
                session.delivered(sid, len(data))  # the echo service took it in at once
                buf = pending.get(sid)
                if buf is None:
                    pending[sid] = bytearray(data)
                else:
                    buf += data
                self._flush(session, sid)
            elif kind is CreditGranted:
                self._flush(session, event.stream_id)  # type: ignore[union-attr]
            elif kind is StreamOpened:
                session.confirm_open(event.stream_id)  # type: ignore[union-attr]
                self.fleet.streams_opened += 1
            elif kind is EndReceived:
                if not event.finished:  # type: ignore[union-attr]
                    fins.add(event.stream_id)  # type: ignore[union-attr]
                    self._flush(session, event.stream_id)  # type: ignore[union-attr]
            elif kind is StreamReset:
                pending.pop(event.stream_id, None)  # type: ignore[union-attr]
                fins.discard(event.stream_id)  # type: ignore[union-attr]
            elif kind is SessionStarted:
                pending.clear()
                fins.clear()
        for sid in session.ended_streams():
            pending.pop(sid, None)
            fins.discard(sid)
        if session.has_output:
            self._wakeup.set()
        if session.can_confirm and not self._confirming and self._connection is not None:
            self._confirming = True
            asyncio.ensure_future(self._confirm(session, self._connection))

    def _flush(self, session: Session, sid: int) -> None:
        """Echo what is pending on ``sid`` within its credit; then a FIN that was waiting for it."""
        if sid not in session.streams:
            self._pending.pop(sid, None)
            self._fin_pending.discard(sid)
            return
        buf = self._pending.get(sid)
        while buf:
            n = min(session.send_credit(sid), MAX_DATA, len(buf))
            if n <= 0:
                return
            session.send_data(sid, bytes(buf[:n]))
            del buf[:n]
        self._pending.pop(sid, None)
        if sid in self._fin_pending:
            self._fin_pending.discard(sid)
            session.send_fin(sid)

    async def _confirm(self, session: Session, connection: DirectClientConnection) -> None:
        """v2: finished streams are let go once a pong shows the server processed their last frames."""
        try:
            mark = session.mark()
            while session.has_output:
                await asyncio.sleep(0.01)
            pong = await connection.ping()
            await pong
            session.peer_caught_up(mark)
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            self._confirming = False
