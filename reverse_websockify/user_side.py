"""The server's side of a stream: a user's TCP connection.

A user's connection starts as a ``WaitingUser``: accepted, not read, until a
tunnel takes it (at once when an agent is attached, or when one attaches
within ``agent_wait_seconds``). The tunnel then opens a stream and hands the
socket to a ``UserStream`` (``transport.set_protocol``), which relays it and
keeps the user-side rules: the agent must answer OPEN within
``open_timeout_seconds``, and the time to its answer is the open latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from .logfields import fields
from .reasons import StreamFailure
from .session import Session
from .stats import ServiceStats
from .streams import READ_AHEAD, Outlet, StreamEndpoint, peer_name, reset_connection

log = logging.getLogger("reverse_websockify.stream")


class WaitingUser(asyncio.Protocol):
    """A user's connection that has no stream yet: held with reading paused.

    ``arrived`` is called once the connection is made; ``left`` if it closes
    before a tunnel took it. Bytes and EOF that come anyway (uvloop may finish
    a read it started before the pause) are kept for the stream.
    """

    transport: asyncio.Transport

    def __init__(self, service_id: str, arrived: Callable[[WaitingUser], None],
                 left: Callable[[WaitingUser], None]) -> None:
        self.service_id = service_id
        self._arrived = arrived
        self._left = left
        self.peer = ""
        self.accepted_at = 0.0
        self.early = bytearray()  # read before a stream existed; sent first
        self.early_eof = False
        self._agent_wait: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        self.accepted_at = time.monotonic()  # not the loop's time: get_running_loop() costs a getpid()
        self.transport.pause_reading()
        self.peer = peer_name(transport)
        self._arrived(self)

    def data_received(self, data: bytes) -> None:
        self.early += data
        if len(self.early) >= READ_AHEAD:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.early_eof = True
        return True  # the user may still read the service's answer (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_waiting()
        self._left(self)

    def wait_for_agent(self, seconds: float, expired: Callable[[WaitingUser], None]) -> None:
        loop = asyncio.get_running_loop()
        self._agent_wait = loop.call_later(seconds, expired, self)

    def stop_waiting(self) -> None:
        if self._agent_wait is not None:
            self._agent_wait.cancel()
            self._agent_wait = None

    def refuse(self) -> None:
        """No stream for this user: a TCP reset, so it cannot mistake the close for an empty answer."""
        self.stop_waiting()
        reset_connection(self.transport)


class UserStream(StreamEndpoint):
    """A user's connection with a stream: relayed; the agent must answer OPEN in time."""

    def __init__(self, session: Session, stream_id: int, outlet: Outlet, service_id: str, user: WaitingUser, *,
                 loop: asyncio.AbstractEventLoop, open_timeout: float | None, stats: ServiceStats) -> None:
        super().__init__(session, stream_id, outlet, service_id, user.peer)
        self.transport = user.transport
        self.accepted_at = user.accepted_at
        self.stats = stats
        self._unsent += user.early
        self._eof_unsent = user.early_eof
        self._open_timeout = open_timeout
        self._open_timer = loop.call_later(open_timeout, self._open_expired) if open_timeout else None
        user.stop_waiting()
        self.transport.set_protocol(self)
        log.info("%s: user %s connected", self.describe(), self.peer, extra=self.log_fields())

    def on_open_ok(self) -> None:
        self._cancel_open_timer()
        self.stats.opened(time.monotonic() - self.accepted_at)
        log.debug("%s: agent connected to its service", self.describe())

    def on_reset(self, reason: str, before_open: bool) -> None:
        failure = None
        if before_open:  # the agent could not reach its service
            failure = StreamFailure.DIAL_FAILED
            self.stats.failed(failure)
        self._close_abruptly()
        self._end(f"reset by peer: {reason or 'no reason given'}", logging.INFO, failure)

    def _open_expired(self) -> None:
        self._open_timer = None
        self.stats.failed(StreamFailure.OPEN_TIMEOUT)
        self.abort(f"the agent did not connect to its service within {self._open_timeout:g} s", notify_peer=True,
                   failure=StreamFailure.OPEN_TIMEOUT)

    def _cancel_open_timer(self) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None

    def _on_end(self) -> None:
        self._cancel_open_timer()


def refuse_user(user: WaitingUser, why: str, stats: ServiceStats, failure: StreamFailure, *,
                reason: str | None = None, level: int = logging.INFO) -> None:
    """Close a user who gets no stream: one log line ("service ID: <why> <peer>"), the failure counted."""
    log.log(level, "service %s: %s %s", user.service_id, why, user.peer,
            extra=fields(user.service_id, peer=user.peer, reason=reason, failure=failure.value))
    stats.failed(failure)
    user.refuse()
