"""One ``[remote_service.<ID>]`` on the server: its users, its agent's session, its counters.

Users who connect while no agent is attached wait (not read) up to
``agent_wait_seconds``, because a cellular agent typically comes back within
seconds. With protocol v2 the agent's session outlives a lost link for
``resume_seconds``: its streams stay open, paused, and carry on when the same
agent resumes. A different agent replaces the attached one only when that one
does not answer a ping (see server.py): the old link is then a dead cellular
connection that keepalive has not caught yet.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from datetime import datetime, timezone
from typing import Any

from .config import ServerConfig, ServiceConfig
from .identity import AgentIdentity
from .logfields import fields
from .protocol import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_REPLACED
from .reasons import StreamFailure
from .stats import ServiceStats
from .tunnel import Tunnel
from .user_side import WaitingUser, refuse_user

log = logging.getLogger("reverse_websockify.server")


@functools.lru_cache(maxsize=1 << 14)
def iso_utc(timestamp: float) -> str:
    """Cached: a disconnect's time is formatted for every status read, 8,000 times a page in a fleet."""
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Service:
    def __init__(self, config: ServiceConfig, server_config: ServerConfig) -> None:
        self.config = config
        self.server_config = server_config
        self.service_id = config.id
        self.listener: asyncio.Server | None = None
        self.tunnel: Tunnel | None = None  # the agent's session: attached, or detached (v2) until it expires
        self.agent_address = ""
        self.agent_version = ""
        self.agent_identity: AgentIdentity | None = None  # what the session's agent presented at attach
        self.connected_since: str | None = None
        self.connected_at = 0.0
        self.disconnected_at: float | None = None  # wall clock, for "offline for ..."
        self.last_disconnect_reason = ""
        self.waiting: set[WaitingUser] = set()
        self._expiry: asyncio.TimerHandle | None = None  # ends a detached session
        self.stats = ServiceStats()
        # counters of tunnels that have ended; the live tunnel's are added on read
        self._bytes_to_service = 0
        self._bytes_from_service = 0
        self._streams_opened = 0
        self.agent_connects = 0
        self.agent_disconnects = 0

    @property
    def agent_attached(self) -> bool:
        return self.tunnel is not None and self.tunnel.attached

    @property
    def detached(self) -> Tunnel | None:
        """The session waiting for its agent to resume it, if any."""
        tunnel = self.tunnel
        return tunnel if tunnel is not None and not tunnel.closed and not tunnel.attached else None

    def new_user(self) -> WaitingUser:
        """The listener's protocol factory: every accepted connection starts as a waiting user."""
        return WaitingUser(self.service_id, self._user_arrived, self.waiting.discard)

    # -- users ----------------------------------------------------------------------------

    def _user_arrived(self, user: WaitingUser) -> None:
        if self.tunnel is not None and self.tunnel.attached:
            self._give_stream(self.tunnel, user)
            return
        wait = self.server_config.agent_wait
        limit = self.server_config.max_streams_per_agent
        if len(self.waiting) >= limit:
            refuse_user(user, f"{limit} users already wait for an agent, the limit (max_streams_per_agent); "
                        "refusing user", self.stats, StreamFailure.TOO_MANY_STREAMS, reason="too many waiting",
                        level=logging.WARNING)
            return
        if wait <= 0:
            refuse_user(user, "no agent attached; closing user", self.stats, StreamFailure.NO_AGENT,
                        reason="no agent")
            return
        log.info("service %s: no agent attached; user %s waits up to %g s", self.service_id, user.peer, wait,
                 extra=fields(self.service_id, peer=user.peer))
        self.waiting.add(user)
        user.wait_for_agent(wait, self._wait_expired)

    def _wait_expired(self, user: WaitingUser) -> None:
        if user in self.waiting:
            self.waiting.discard(user)
            refuse_user(user, f"no agent came within {self.server_config.agent_wait:g} s; closing user", self.stats,
                        StreamFailure.NO_AGENT, reason="no agent")

    def _give_stream(self, tunnel: Tunnel, user: WaitingUser) -> None:
        if not tunnel.open_stream(user):
            refuse_user(user, f"{tunnel.stream_count} streams open, the limit; refusing user", self.stats,
                        StreamFailure.TOO_MANY_STREAMS, level=logging.WARNING)

    # -- agents ---------------------------------------------------------------------------

    def attach(self, tunnel: Tunnel, address: str, version: str, identity: AgentIdentity | None = None) -> None:
        """A new session (a different agent, or one that could not resume)."""
        old = self.tunnel
        self._cancel_expiry()
        if old is not None and not old.closed:
            if old.attached:
                log.warning("service %s: agent %s replaces the agent from %s", self.service_id, address,
                            self.agent_address, extra=fields(self.service_id, peer=address, reason="replaced"))
            else:
                log.warning("service %s: agent %s starts a new session; the detached session of the agent from %s "
                            "and its %d streams are dropped", self.service_id, address, self.agent_address,
                            old.stream_count, extra=fields(self.service_id, peer=address, reason="replaced"))
            self._retire(old)
            asyncio.get_running_loop().create_task(old.close(CLOSE_REPLACED, "replaced by a newer agent connection"))
        self.tunnel = tunnel
        self._connected(address, version, identity)
        log.info("service %s: agent connected from %s (%s)%s", self.service_id, address, version or "unknown version",
                 f", certificate {identity}" if identity else "",
                 extra=fields(self.service_id, peer=address, agent_version=version))
        self._give_waiting_users(tunnel)

    def resume(self, tunnel: Tunnel, address: str, version: str, identity: AgentIdentity | None = None) -> None:
        """The agent of ``tunnel`` came back on a new WebSocket (from ``address``): its session carries on."""
        self._cancel_expiry()
        old_link = tunnel.take_over()
        if old_link is not None:  # the agent saw its link die before we did
            asyncio.get_running_loop().create_task(old_link.close(CLOSE_REPLACED, "the agent resumed on a new connection"))
        self._connected(address, version, identity)
        log.info("service %s: agent resumed its session from %s (%s); %d streams kept", self.service_id, address,
                 version or "unknown version", tunnel.stream_count,
                 extra=fields(self.service_id, peer=address, agent_version=version, reason="resumed"))
        self._give_waiting_users(tunnel)

    def _connected(self, address: str, version: str, identity: AgentIdentity | None) -> None:
        self.agent_address = address
        self.agent_version = version
        self.agent_identity = identity
        self.connected_since = iso_utc(time.time())
        self.connected_at = time.monotonic()
        self.agent_connects += 1

    def _give_waiting_users(self, tunnel: Tunnel) -> None:
        waiting, self.waiting = self.waiting, set()
        for user in waiting:
            self._give_stream(tunnel, user)

    def link_ended(self, tunnel: Tunnel, kept: bool) -> None:
        """The WebSocket of ``tunnel`` ended; ``kept``: its session lives on, detached (v2)."""
        if self.tunnel is not tunnel or tunnel.attached:
            return  # replaced (retired already), or the agent resumed on a newer link
        self.connected_since = None
        self.disconnected_at = time.time()
        self.agent_disconnects += 1
        self.last_disconnect_reason = tunnel.close_reason
        duration = time.monotonic() - self.connected_at
        keep = self.server_config.resume_seconds
        log.info("service %s: agent %s disconnected after %.1f s: %s%s", self.service_id,
                 self.agent_address, duration, tunnel.close_reason,
                 f"; keeping its session ({tunnel.stream_count} streams) for {keep:g} s" if kept else "",
                 extra=fields(self.service_id, peer=self.agent_address, reason=tunnel.close_reason,
                              close_code=tunnel.close_code, duration_seconds=round(duration, 3)))
        if kept:
            self._expiry = asyncio.get_running_loop().call_later(keep, self._expire, tunnel)
        else:
            self._retire(tunnel)
            self.tunnel = None

    def _expire(self, tunnel: Tunnel) -> None:
        self._expiry = None
        if self.tunnel is not tunnel or tunnel.attached or tunnel.closed:
            return
        keep = self.server_config.resume_seconds
        log.warning("service %s: the session of the agent from %s expired: it did not come back within %g s; "
                    "%d streams reset", self.service_id, self.agent_address, keep, tunnel.stream_count,
                    extra=fields(self.service_id, peer=self.agent_address, reason="session expired"))
        self.stats.sessions_expired += 1
        tunnel.expire(f"session expired after {keep:g} s without the agent")
        self._retire(tunnel)
        self.tunnel = None

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def shut_down(self, reason: str) -> None:
        """Stop listening, close waiting users and the agent (1001)."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        waiting, self.waiting = self.waiting, set()
        for user in waiting:
            user.refuse()
        self._cancel_expiry()
        if self.tunnel is not None:
            await self.tunnel.close(CLOSE_GOING_AWAY, reason)

    async def cut_off(self, why: str) -> None:
        """The agent may no longer attach (revoked, rebound): end its session; users and listener stay."""
        tunnel = self.tunnel
        if tunnel is None or tunnel.closed:
            return
        log.warning("service %s: cutting off the agent from %s: %s; %d streams reset", self.service_id,
                    self.agent_address, why, tunnel.stream_count,
                    extra=fields(self.service_id, peer=self.agent_address, reason="cut off", close_code=CLOSE_POLICY))
        self._cancel_expiry()
        attached = tunnel.attached
        await tunnel.close(CLOSE_POLICY, why[:120])
        if not attached:  # no link whose end would retire it
            self._retire(tunnel)
            self.tunnel = None

    def _retire(self, tunnel: Tunnel) -> None:
        session = tunnel.session
        self._bytes_to_service += session.bytes_sent
        self._bytes_from_service += session.bytes_received
        self._streams_opened += session.streams_opened
        session.bytes_sent = session.bytes_received = session.streams_opened = 0

    # -- status ---------------------------------------------------------------------------

    def totals(self) -> tuple[int, int, int, int]:
        """(bytes to the service, bytes from it, streams opened, users now): all sessions so far.

        What /metrics reads of every service at every scrape, so kept to a few attribute reads.
        """
        tunnel = self.tunnel
        if tunnel is None:
            return self._bytes_to_service, self._bytes_from_service, self._streams_opened, len(self.waiting)
        session = tunnel.session
        return (self._bytes_to_service + session.bytes_sent, self._bytes_from_service + session.bytes_received,
                self._streams_opened + session.streams_opened, len(self.waiting) + tunnel.stream_count)

    def brief(self) -> dict[str, Any]:
        """The keys of ``snapshot`` that filtering, paging and fleet totals read (status.py), at a fraction
        of its cost: a 100-row page of 8,000 services needs these of all and the whole entry of 100."""
        to_service, from_service, _, users = self.totals()
        detached = self.detached
        return {"nickname": self.config.nickname, "connected": self.agent_attached,
                "reconnecting_since": True if detached is not None and detached.detached_since else None,
                "client_connection_count": users, "bytes_to_service": to_service, "bytes_from_service": from_service}

    def snapshot(self) -> dict[str, Any]:
        """This service's entry of the status page: read for every service at every load (8,000 in a fleet),
        hence the properties spelled out and nothing computed that is not shown."""
        tunnel = self.tunnel
        to_service, from_service, opened, users = self.totals()
        failures = self.stats.failures
        entry: dict[str, Any] = {
            "nickname": self.config.nickname,
            "forward_at": self.config.listen.text,
            "service_connection_since": None,
            "service_connection_info": None,
            "client_connection_count": users,
            "connected": False,
            "agent_address": self.agent_address or None,
            "agent_version": self.agent_version or None,
            "agent_identity": None,
            "agent_certificate_serial": None,
            "bytes_to_service": to_service,
            "bytes_from_service": from_service,
            "streams_opened_total": opened,
            "last_disconnect_reason": self.last_disconnect_reason or None,
            "connected_for_seconds": None,
            "disconnected_since": None,
            "streams_failed": {reason.value: n for reason, n in failures.items()} if failures else {},
            "reconnecting_since": None,
            "paused_streams": 0,
            "sessions_resumed": self.stats.sessions_resumed,
            "receive_window_bytes": 0,
        }
        if tunnel is not None:
            identity = self.agent_identity
            if identity is not None:
                entry["agent_identity"] = ", ".join(identity.names) or None
                if identity.serial is not None:
                    entry["agent_certificate_serial"] = f"{identity.serial:X}"
            entry["receive_window_bytes"] = tunnel.session.receive_window_bytes
            if tunnel.attached:
                entry["service_connection_since"] = self.connected_since
                entry["service_connection_info"] = self.agent_address
                entry["connected"] = True
                entry["connected_for_seconds"] = round(time.monotonic() - self.connected_at, 1)
                return entry
            if not tunnel.closed:  # detached: waiting for its agent to resume the session
                if tunnel.detached_since:
                    entry["reconnecting_since"] = iso_utc(tunnel.detached_since)
                entry["paused_streams"] = tunnel.stream_count
        if self.disconnected_at:
            entry["disconnected_since"] = iso_utc(self.disconnected_at)
        return entry
