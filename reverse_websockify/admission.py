"""Which agent may attach to a service: one session per service ID, resumed only with its secret.

Decided while the WebSocket handshake is routed, before it is accepted, so a
refused agent gets a plain HTTP answer (its backoff then applies):

- an agent that presents the session's id and secret (``X-Reverse-Websockify-Resume``,
  protocol v2) resumes it — even while the old link still looks alive, since
  the agent knows better that it is dead;
- a wrong or stale secret is refused (403) and the session is left alone;
- any other agent — a clone of the device image, a stale unit next to a manual
  run, or one whose session the server no longer knows — starts a new session,
  unless the attached agent answers a ping within ``PROBE_SECONDS``: then it is
  refused (409) instead of both replacing each other forever. A frozen link does
  not answer, so it is still replaced within seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from http import HTTPStatus
from typing import NamedTuple

from .logfields import fields
from .protocol import SECRET_SIZE, SESSION_ID_SIZE
from .service import Service
from .tunnel import Tunnel
from .wsconnection import ConnectionClosed

log = logging.getLogger("reverse_websockify.server")

PROBE_SECONDS = 2.0
"""How long the attached agent has to answer a ping before a different agent takes its place."""


class Refusal(NamedTuple):
    status: HTTPStatus
    text: str


def parse_resume(value: str) -> tuple[bytes, bytes] | None:
    """``<session id hex>.<secret hex>`` -> (session id, secret), or None if malformed."""
    session_hex, _, secret_hex = value.strip().partition(".")
    try:
        session_id, secret = bytes.fromhex(session_hex), bytes.fromhex(secret_hex)
    except ValueError:
        return None
    if len(session_id) != SESSION_ID_SIZE or len(secret) != SECRET_SIZE:
        return None
    return session_id, secret


async def answers_ping(tunnel: Tunnel, timeout: float) -> bool:
    connection = tunnel.connection
    if connection is None:
        return False
    try:
        pong = await connection.ping()
        await asyncio.wait_for(pong, timeout)
    except (asyncio.TimeoutError, ConnectionClosed):
        return False
    return True


async def admit(service: Service, address: str, resume_header: str | None, *,
                probe_seconds: float = PROBE_SECONDS) -> Refusal | Tunnel | None:
    """The session to resume, None for a new session, or why the agent at ``address`` is refused."""
    sid = service.service_id
    tunnel = service.tunnel
    if resume_header is not None:
        presented = parse_resume(resume_header)
        if presented is None:
            return Refusal(HTTPStatus.BAD_REQUEST, "malformed X-Reverse-Websockify-Resume header\n")
        hello = tunnel.session.hello if tunnel is not None and not tunnel.closed else None
        if hello is not None and hmac.compare_digest(presented[0], hello.session_id):
            if hmac.compare_digest(presented[1], hello.secret):
                return tunnel
            log.warning("service %s: agent %s refused: wrong or stale session secret (403); the session stays",
                        sid, address, extra=fields(sid, peer=address, reason="wrong session secret"))
            return Refusal(HTTPStatus.FORBIDDEN, f"wrong or stale session secret for service {sid}\n")
        log.info("service %s: agent %s asked to resume a session this server does not know (it expired or the "
                 "server restarted); starting a new session", sid, address,
                 extra=fields(sid, peer=address, reason="unknown session"))
    if tunnel is not None and tunnel.attached and await answers_ping(tunnel, probe_seconds):
        other = service.agent_address
        log.warning("service %s: agent %s refused (409): the agent from %s is attached and answers", sid, address,
                    other, extra=fields(sid, peer=address, reason="another agent is attached"))
        return Refusal(HTTPStatus.CONFLICT,
                       f"another agent (from {other}) is attached to service {sid} and answers; "
                       "this one keeps retrying and takes over when that one goes away\n")
    return None
