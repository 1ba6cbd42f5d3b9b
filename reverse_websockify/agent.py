"""The agent: keep one WebSocket to the server open forever; dial the service per stream.

Reconnects with capped exponential backoff and full jitter, so a fleet of
buses coming back after an outage does not hit the server in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import time
from http import HTTPStatus
from typing import Any, Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI

from . import __version__
from .config import AgentConfig
from .errors import describe_error
from .fdlimit import raise_soft_limit
from .logfields import fields
from .protocol import CLOSE_GOING_AWAY, INITIAL_WINDOW, RESUME_HEADER, VERSIONS
from .service_side import DialTarget
from .signals import on_stop_signals
from .tls import AgentTlsSetup, name_mismatch
from .tunnel import Tunnel
from .wsconnection import DirectClientConnection, connection_options

log = logging.getLogger("reverse_websockify.agent")

USER_AGENT = f"reverse_websockify_agent/{__version__}"

AT_ONCE_AFTER = 1.0
"""A link lost after living this long is retried at once (then with the usual backoff)."""


def backoff_delays(initial: float, cap: float) -> Iterator[float]:
    """Capped exponential backoff with jitter: 0.5..1 x (1, 2, 4, ... cap) seconds."""
    attempt = 0
    while True:
        ceiling = min(cap, initial * (2 ** attempt))
        yield ceiling * random.uniform(0.5, 1.0)
        attempt = min(attempt + 1, 30)


class Agent:
    def __init__(self, config: AgentConfig, tls: AgentTlsSetup | None = None) -> None:
        """``tls``: required for a wss:// URL (``tls.agent_tls``, built before the event loop runs)."""
        self.config = config
        self.tls = tls
        self.tunnel: Tunnel | None = None  # the session: attached, or detached and waiting to resume
        self._expiry: asyncio.TimerHandle | None = None  # gives a detached session up
        self._target = DialTarget(config.service.host, config.service.port, config.dial_timeout)
        self._stopping = asyncio.Event()
        self._name_problem: str | None = None

    def _name_checking_connection(self) -> type[ClientConnection]:
        """A ClientConnection that checks the server's certificate name before the HTTP request goes out."""
        expected = self.tls.check_name_ourselves if self.tls else None
        agent = self

        class NameCheckingConnection(DirectClientConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                ssl_object = transport.get_extra_info("ssl_object")
                problem = name_mismatch(ssl_object.getpeercert() if ssl_object else None, expected)
                if problem:
                    agent._name_problem = problem
                    transport.abort()

        return NameCheckingConnection

    def _connect(self) -> connect:
        cfg = self.config
        headers = {}
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        tunnel = self.tunnel
        hello = tunnel.session.hello if tunnel is not None and not tunnel.closed else None
        if hello is not None:  # a detached session: ask to resume it
            headers[RESUME_HEADER] = f"{hello.session_id.hex()}.{hello.secret.hex()}"
        kwargs: dict[str, Any] = {"create_connection": DirectClientConnection}
        if self.tls is not None:
            kwargs["ssl"] = self.tls.context
            if self.tls.server_hostname:
                kwargs["server_hostname"] = self.tls.server_hostname
            if self.tls.check_name_ourselves:
                kwargs["create_connection"] = self._name_checking_connection()
        return connect(
            cfg.url,
            **connection_options(ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout,
                                 open_timeout=cfg.open_timeout),
            user_agent_header=USER_AGENT,
            additional_headers=headers,
            **kwargs,
        )

    async def run_forever(self) -> None:
        cfg = self.config
        proxy = proxy_for(cfg.url)
        if proxy:
            log.info("connecting to %s through proxy %s (from the environment; NO_PROXY bypasses it)",
                     cfg.url, proxy)
        delays = backoff_delays(cfg.backoff_initial, cfg.backoff_max)
        while not self._stopping.is_set():
            if cfg.tls is not None and cfg.tls.insecure:
                log.warning("TLS verification is OFF (--insecure): anyone on the path can impersonate the server")
            started = time.monotonic()
            self._name_problem = None
            try:
                connection: ClientConnection = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report_connect_error(exc)
            else:
                delays = backoff_delays(cfg.backoff_initial, cfg.backoff_max)  # connected: start over
                kept = await self._serve(connection, started)
                if self._stopping.is_set():
                    break
                if kept and time.monotonic() - started >= AT_ONCE_AFTER:
                    continue  # the link was lost with streams to carry over: try again at once
            delay = next(delays)
            log.info("reconnecting in %.1f s", delay)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _report_connect_error(self, exc: Exception) -> None:
        if isinstance(exc, InvalidStatus):
            body = exc.response.body.decode("utf-8", "replace") if exc.response.body else ""
            text = " ".join(re.sub(r"<[^>]*>", " ", body).split())  # nginx answers in HTML
            log.error("server refused the agent: HTTP %d %s", exc.response.status_code, text[:300])
            if self.tunnel is not None and exc.response.status_code in (HTTPStatus.FORBIDDEN, HTTPStatus.CONFLICT):
                # The server will not resume our session: a refused secret, or another agent holds the ID.
                self._give_up_session(f"the server refused to resume it (HTTP {exc.response.status_code})")
        elif isinstance(exc, InvalidURI):
            log.error("bad --reverse-websockify URL: %s", exc)
        elif isinstance(exc, ssl.SSLCertVerificationError):
            log.error("server certificate rejected: %s (is --ca-cert the certificate that signed the server's?)",
                      exc.verify_message or exc)
        elif self._name_problem:
            log.error("server certificate rejected: %s (use --tls-server-name if the server is "
                      "reached by another name)", self._name_problem)
        elif isinstance(exc, InvalidMessage) and self.tls is not None:
            # With TLS 1.3 a refused client certificate shows up only as a closed connection.
            log.error("cannot connect to %s: the server closed the TLS connection without answering; it may "
                      "require a client certificate (--client-cert/--client-key) or refuse this one (%s)",
                      self.config.url, describe_error(exc))
        else:
            log.error("cannot connect to %s: %s", self.config.url, describe_error(exc))

    async def _serve(self, connection: ClientConnection, started: float) -> bool:
        """Relay over ``connection`` until it ends; True when the session is kept to resume (v2)."""
        cfg = self.config
        log.info("connected to %s as service %s; relaying to %s", cfg.url, cfg.service_id, self._target)
        version = VERSIONS.get(connection.subprotocol or "", 1)
        tunnel = self.tunnel
        if tunnel is not None and tunnel.session.version != version:
            self._give_up_session("the server no longer speaks protocol v2")
            tunnel = None
        if tunnel is None or tunnel.closed:
            tunnel = Tunnel(role="agent", service_id=cfg.service_id, version=version, window=INITIAL_WINDOW,
                            dial_target=self._target, receive_budget=cfg.receive_budget)
            self.tunnel = tunnel
        self._cancel_expiry()
        kept = False
        try:
            kept = await tunnel.run(connection)  # type: ignore[arg-type]
        except Exception:  # a bug: say so, then reconnect rather than die
            log.exception("tunnel failed")
            tunnel.expire("internal error")
        duration = time.monotonic() - started
        hello = tunnel.session.hello
        if kept and hello is not None and not self._stopping.is_set():
            log.warning("disconnected after %.1f s: %s; keeping %d streams for up to %d s to resume the session",
                        duration, tunnel.close_reason, tunnel.stream_count, hello.resume_seconds,
                        extra=fields(cfg.service_id, reason=tunnel.close_reason, close_code=tunnel.close_code,
                                     duration_seconds=round(duration, 3)))
            self._expiry = asyncio.get_running_loop().call_later(
                hello.resume_seconds, self._give_up_session,
                f"no connection to the server within {hello.resume_seconds} s")
            return True
        if kept:  # a link lost before the server's HELLO: there is no session to resume
            tunnel.expire(tunnel.close_reason)
        if self.tunnel is tunnel:
            self.tunnel = None
        log.warning("disconnected after %.1f s: %s", duration, tunnel.close_reason,
                    extra=fields(cfg.service_id, reason=tunnel.close_reason, close_code=tunnel.close_code,
                                 duration_seconds=round(duration, 3)))
        return False

    def _give_up_session(self, why: str) -> None:
        """The detached session cannot resume: its streams are reset."""
        self._cancel_expiry()
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is None or tunnel.closed:
            return
        log.warning("session given up: %s; %d streams reset", why, tunnel.stream_count,
                    extra=fields(self.config.service_id, reason="session given up"))
        tunnel.expire(f"session given up: {why}")

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def stop(self) -> None:
        self._stopping.set()
        if self.tunnel is not None:
            await self.tunnel.close(CLOSE_GOING_AWAY, "agent shutting down")

    async def serve_forever(self) -> None:
        """Run until SIGTERM/SIGINT: then close the tunnel with 1001 (or stop connecting) and return."""
        loop = asyncio.get_running_loop()
        raise_soft_limit()  # one descriptor per stream: do not stop at a distribution's 1024
        runner = asyncio.ensure_future(self.run_forever())

        def on_signal() -> None:
            log.info("shutting down")
            tunnel = self.tunnel
            if tunnel is not None and tunnel.attached:
                loop.create_task(self.stop())  # tells the server (1001): it drops the session at once
                return
            self._stopping.set()
            self._cancel_expiry()
            if tunnel is not None:
                tunnel.expire("agent shutting down")
            runner.cancel()

        on_stop_signals(loop, on_signal)
        try:
            await runner
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise


def proxy_for(url: str) -> str | None:
    """The proxy websockets will use for ``url``, from HTTPS_PROXY/NO_PROXY & co."""
    from websockets.proxy import get_proxy
    from websockets.uri import parse_uri

    try:
        return get_proxy(parse_uri(url))
    except Exception:  # an unusable proxy setting surfaces as a connect error instead
        return None
