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
from typing import Any, Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI

from . import __version__
from .config import AgentConfig
from .errors import describe_error
from .fdlimit import raise_soft_limit
from .logfields import fields
from .protocol import CLOSE_GOING_AWAY, INITIAL_WINDOW
from .service_side import DialTarget
from .signals import on_stop_signals
from .tls import AgentTlsSetup, name_mismatch
from .tunnel import Tunnel
from .wsconnection import DirectClientConnection, connection_options

log = logging.getLogger("reverse_websockify.agent")

USER_AGENT = f"reverse_websockify_agent/{__version__}"


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
        self.tunnel: Tunnel | None = None
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
                await self._serve(connection, started)
                if self._stopping.is_set():
                    break
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

    async def _serve(self, connection: ClientConnection, started: float) -> None:
        cfg = self.config
        log.info("connected to %s as service %s; relaying to %s", cfg.url, cfg.service_id, self._target)
        tunnel = Tunnel(connection, role="agent", service_id=cfg.service_id, window=INITIAL_WINDOW,  # type: ignore[arg-type]
                        dial_target=self._target)
        self.tunnel = tunnel
        try:
            await tunnel.run()
        except Exception:  # a bug: say so, then reconnect rather than die
            log.exception("tunnel failed")
        finally:
            self.tunnel = None
        duration = time.monotonic() - started
        log.warning("disconnected after %.1f s: %s", duration, tunnel.close_reason,
                    extra=fields(cfg.service_id, reason=tunnel.close_reason, close_code=tunnel.close_code,
                                 duration_seconds=round(duration, 3)))

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
            if self.tunnel is not None:
                loop.create_task(self.stop())
            else:
                self._stopping.set()
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
