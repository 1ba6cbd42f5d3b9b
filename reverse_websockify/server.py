"""The rendezvous server: HTTP routes (agents, status, metrics), one TCP listener per service, reload.

What happens per service — users waiting, the attached agent, counters — is
``service.py``; this module routes requests to it and runs the process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import secrets
import signal
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import __version__
from .authentication import Credentials, check, still_allowed
from .config import ConfigError, ServerConfig, load
from .fdlimit import FdWatch, raise_soft_limit
from .gcpolicy import FreezeAfterFullCollections
from .identity import CertificateError, from_certificate, from_proxy_headers
from .logfields import fields
from .admission import Refusal, admit
from .protocol import (
    AGENT_PATH_PREFIX,
    CLOSE_GOING_AWAY,
    INITIAL_WINDOW,
    RESUME_HEADER,
    SECRET_SIZE,
    SESSION_ID_SIZE,
    SUBPROTOCOL,
    SUBPROTOCOL_V2,
    VERSIONS,
    Hello,
)
from .liveness import FleetKeepalive
from .looplag import LoopLag, LoopLagWatch
from .pacing import collector_paused, in_worker_thread, paced
from .reports import Reports
from .revocation import RevocationListError, load_revocation_list
from .service import Service
from .signals import on_stop_signals
from .tls import TlsSetupError, server_context
from .tunnel import Tunnel
from .wsconnection import DirectServerConnection, connection_options, response_with_body

log = logging.getLogger("reverse_websockify.server")


HTTP_BACKLOG = 4096
"""A restarted server meets its whole fleet reconnecting at once; asyncio's default (100) drops most of them."""


class StartupError(Exception):
    """The server cannot start (e.g. a port is taken); one line for the user."""


def _response(code: HTTPStatus, body: bytes | str, content_type: str = "text/plain; charset=utf-8") -> Response:
    if isinstance(body, str):
        body = body.encode()
    headers = Headers(
        [
            ("Server", f"reverse_websockify/{__version__}"),
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Connection", "close"),
        ]
    )
    return response_with_body(code.value, code.phrase, headers, body)


class RendezvousServer:
    def __init__(self, config: ServerConfig, started_as: str = "") -> None:
        self.config = config
        self.started_as = started_as
        self.services: dict[str, Service] = {sid: Service(sc, config) for sid, sc in config.services.items()}
        self.http: Server | None = None
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies]
        self.revoked = load_revocation_list(config.client_crl, f"{config.path}: client_crl")
        self._tls_context = self._ssl_context(config)  # replaced on reload; see _use_current_tls_context
        self._certificates_seen = config.tls is not None and config.tls.client_ca is not None
        self._warned_unguarded: set[str] = set()
        self._stopping = asyncio.Event()
        self.keepalive = FleetKeepalive(config.ping_interval, config.ping_timeout)
        self.loop_lag = LoopLag()
        self.reports = Reports(lambda: self.services, lambda: self.config.metrics_per_service_limit, self.loop_lag)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every port, or none: a taken port is a StartupError and nothing stays open."""
        try:
            for service in self.services.values():
                await self._listen(service)
            http = self.config.http
            self.http = await self._bind("http_server_endpoint", http, serve(
                self._handle_agent,
                http.host,
                http.port,
                process_request=self._route,
                # keepalive: one FleetKeepalive for every agent, not a websockets task each (liveness.py)
                **connection_options(ping_interval=None, ping_timeout=None,
                                     open_timeout=self.config.handshake_timeout, subprotocols=self._subprotocols),
                server_header=f"reverse_websockify/{__version__}",
                ssl=self._tls_context,
                reuse_address=True,
                backlog=HTTP_BACKLOG,
                create_connection=DirectServerConnection,
            ))
        except BaseException:
            self._close_listeners()
            raise
        log.info("%s: HTTP on %s%s; %d services: %s", self.started_as or "started", self.config.http,
                 " (TLS)" if self.config.tls else "",
                 len(self.services), ", ".join(f"{s.service_id} on {s.config.listen}" for s in self.services.values()))
        if self.config.client_crl is not None:
            log.info("client_crl %s: %d revoked certificates", self.config.client_crl, len(self.revoked))
        self._warn_unguarded()

    async def _listen(self, service: Service) -> None:
        listen = service.config.listen
        loop = asyncio.get_running_loop()
        service.listener = await self._bind(
            f"remote_service.{service.service_id}.local_listen_endpoint",
            listen,
            loop.create_server(service.new_user, listen.host, listen.port, reuse_address=True, backlog=1024),
        )

    async def reload(self) -> None:
        """SIGHUP: apply a changed config.toml without touching unchanged services.

        Added services start listening, removed ones stop (their agents and users
        are closed), unchanged ones keep their agents and streams. A broken file
        changes nothing. Files are read and parsed in a worker thread and the
        fleet is walked in slices, so that a reload of 8,000 services does not
        hold the relay.
        """
        with collector_paused():  # the parse's objects would set off a full collection (pacing.py)
            try:
                path = self.config.path
                new = await in_worker_thread(lambda: load(path, running=self.config))
                unchanged = new is self.config
                if not unchanged:
                    new = new.reload_view(self.config)  # a shard: its share
                revoked, tls_context = await in_worker_thread(lambda: self._security(new))
            except (ConfigError, RevocationListError, TlsSetupError) as exc:
                log.error("reload failed, keeping the running config: %s", exc)
                return
        for key in ("http", "ping_interval", "ping_timeout", "handshake_timeout", "resume_seconds"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("reload: %s changed; that takes effect only after a restart", key)
        if (new.tls is None) != (self.config.tls is None):
            log.warning("reload: [tls] added or removed; that takes effect only after a restart")
        old_services = self.services
        kept: dict[str, Service] = {}
        changed: list[Service] = []
        async for sid, service in paced(old_services.items()):
            wanted = new.services.get(sid)
            if wanted is not None and wanted.listen == service.config.listen:
                if wanted != service.config:
                    service.config = wanted  # nickname, token or binding may change in place
                    changed.append(service)
                service.server_config = new
                kept[sid] = service
        removed = [s for sid, s in old_services.items() if sid not in kept]
        for service in removed:  # first, so that a port moving between services is free again
            await service.shut_down("service removed from the config")
        added = []
        for sid, wanted in new.services.items():
            if sid in kept:
                continue
            service = Service(wanted, new)
            try:
                await self._listen(service)
            except StartupError as exc:
                log.error("reload: %s; service %s not started", exc, sid)
                continue
            added.append(sid)
            kept[sid] = service
        self.services = {sid: kept[sid] for sid in new.services if sid in kept}
        self.config = new
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in new.trusted_proxies]
        crl_changed = revoked != self.revoked
        self.revoked = revoked
        self._tls_context = tls_context
        self._certificates_seen |= new.tls is not None and new.tls.client_ca is not None
        log.info("reloaded %s%s: %d services; added %s; removed %s; changed %s%s", new.path,
                 " (unchanged)" if unchanged else "", len(self.services),
                 ", ".join(added) or "none", ", ".join(s.service_id for s in removed) or "none",
                 len(changed), f"; client_crl: {len(revoked)} revoked certificates" if new.client_crl else "")
        async for service in paced(self.services.values() if crl_changed else changed):
            if service.tunnel is not None and not service.tunnel.closed:
                why = still_allowed(service.config, service.agent_identity, revoked)
                if why is not None:
                    await service.cut_off(why)
        self._warned_unguarded.clear()
        self._warn_unguarded()

    def _security(self, config: ServerConfig) -> tuple[Any, Any]:
        """The CRL and TLS context of a new config (files: read off the event loop)."""
        revoked = load_revocation_list(config.client_crl, f"{config.path}: client_crl")
        same_mode = (config.tls is None) == (self.config.tls is None)
        return revoked, self._ssl_context(config) if same_mode else self._tls_context

    def _warn_unguarded(self) -> None:
        """Once client certificates are in play, name the services any certificate of the CA may take over."""
        if not self._certificates_seen:
            return
        open_services = [sid for sid, s in self.services.items()
                         if not s.config.guarded and sid not in self._warned_unguarded]
        if open_services:
            self._warned_unguarded.update(open_services)
            log.warning("services without agent_identity or token: %s; any client certificate the CA signed can "
                        "attach as them (see docs/agent-identity.md)", ", ".join(open_services))

    async def _bind(self, key: str, endpoint: Any, opening: Any) -> Any:
        try:
            return await opening
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's strerror repeats the address
            raise StartupError(f"{self.config.path}: {key}: cannot listen on {endpoint}: {why}") from None

    def _ssl_context(self, config: ServerConfig) -> Any:
        if config.tls is None:
            return None
        context = server_context(config.tls, config.path, config.client_crl)
        context.sni_callback = self._use_current_tls_context
        return context

    def _use_current_tls_context(self, ssl_object: Any, server_name: str | None, context: Any) -> None:
        """Every handshake (with or without SNI) uses the newest context: a reload's certificate and CRL."""
        if context is not self._tls_context:
            ssl_object.context = self._tls_context

    def _close_listeners(self) -> None:
        for service in self.services.values():
            if service.listener is not None:
                service.listener.close()
        if self.http is not None:
            self.http.close(close_connections=False)

    async def stop(self) -> None:
        """Graceful shutdown: stop listening, tell agents we are going away (1001), end users."""
        self._close_listeners()
        closing = [service.shut_down("server shutting down") for service in self.services.values()]
        await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 5)
        if self.http is not None:
            await asyncio.wait_for(self.http.wait_closed(), 5)

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        on_stop_signals(loop, self._stopping.set)
        reloading: set[asyncio.Task[None]] = set()

        def on_hangup() -> None:
            log.info("SIGHUP: reloading %s", self.config.path)
            task = loop.create_task(self.reload())
            reloading.add(task)
            task.add_done_callback(reloading.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        except (AttributeError, NotImplementedError, RuntimeError):  # pragma: no cover (Windows)
            pass
        soft, hard = raise_soft_limit()
        watch = FdWatch(soft)
        watch.start()
        collector = FreezeAfterFullCollections(loop)
        lag = LoopLagWatch(self.loop_lag)
        await self.start()
        collector.start()
        lag.start()
        await self._stopping.wait()
        lag.stop()
        collector.stop()
        self.keepalive.stop()
        watch.stop()
        log.info("shutting down")
        try:
            await self.stop()
        except asyncio.TimeoutError:
            log.warning("shutdown took more than 5 s; exiting anyway")

    # -- HTTP ---------------------------------------------------------------------------

    def _client_address(self, connection: DirectServerConnection, request: Request) -> str:
        """The agent's address: the direct peer, or X-Real-Ip when that peer is a trusted proxy."""
        peer = connection.remote_address
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        real = request.headers.get("X-Real-Ip")
        if real and self._is_trusted(connection):
            try:
                return str(ipaddress.ip_address(real.strip()))
            except ValueError:
                pass
        return address

    @property
    def _subprotocols(self) -> tuple[str, ...]:
        """v2 first when sessions may resume; ``resume_seconds = 0`` keeps the server at v1."""
        return (SUBPROTOCOL_V2, SUBPROTOCOL) if self.config.resume_seconds > 0 else (SUBPROTOCOL,)

    async def _route(self, connection: DirectServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        path = unquote(url.path)
        if path in ("/", "/services"):
            return _response(*await self.reports.status(url.query, request.headers.get("Accept", ""),
                                                        envelope=path == "/services"))
        if path == "/metrics":
            return _response(*await self.reports.metrics(url.query))
        if path == "/healthz":
            return _response(HTTPStatus.OK, "ok\n")
        if path.startswith("/ready/"):
            service = self.services.get(path[len("/ready/"):])
            if service is None:
                return _response(HTTPStatus.NOT_FOUND, "unknown service ID\n")
            if service.agent_attached:
                return _response(HTTPStatus.OK, "agent attached\n")
            return _response(HTTPStatus.SERVICE_UNAVAILABLE, "no agent attached\n")
        if not path.startswith(AGENT_PATH_PREFIX):
            return _response(HTTPStatus.NOT_FOUND, "not found\n")
        service_id = path[len(AGENT_PATH_PREFIX):]
        address = self._client_address(connection, request)
        service = self.services.get(service_id)
        misdirected = self.config.misdirected(service_id) if service is None else None
        if misdirected is not None:  # [shards]: another shard owns this ID
            log.warning("agent %s refused (421): %s", address, misdirected,
                        extra=fields(service_id, peer=address, reason="another shard's service"))
            return _response(HTTPStatus.MISDIRECTED_REQUEST, misdirected + "\n")
        if service is None:
            log.warning("agent %s asked for unknown service ID %r: 404", address, service_id[:200],
                        extra=fields(service_id[:200], peer=address, reason="unknown service ID"))
            return _response(HTTPStatus.NOT_FOUND, f"unknown service ID {service_id[:200]!r}\n")
        if "websocket" not in request.headers.get("Upgrade", "").lower():
            return _response(HTTPStatus.UPGRADE_REQUIRED, "this endpoint is for reverse_websockify agents (WebSocket)\n")
        credentials = self._credentials(connection, request)
        refusal = check(service.config, credentials, self.revoked)
        if refusal is not None:
            presented = f"certificate {credentials.identity}" if credentials.identity else "no certificate identity"
            log.warning("service %s: agent %s (%s) refused (%d): %s", service_id, address, presented,
                        refusal.status.value, refusal.text,
                        extra=fields(service_id, peer=address, reason=refusal.reason))
            service.stats.refusals[refusal.reason] += 1
            return _response(refusal.status, refusal.text + "\n")
        if credentials.identity is not None and not self._certificates_seen:
            self._certificates_seen = True
            self._warn_unguarded()
        offered_protocols = ",".join(request.headers.get_all("Sec-WebSocket-Protocol"))
        offered = [p.strip() for p in offered_protocols.split(",")]
        if not any(p in offered for p in self._subprotocols):
            spoken = " or ".join(self._subprotocols)
            log.warning("service %s: agent %s refused: it does not speak %s (offered %r)",
                        service_id, address, spoken, offered_protocols[:100])
            return _response(HTTPStatus.BAD_REQUEST,
                             f"this server speaks WebSocket subprotocol {spoken}; the agent offered {offered_protocols or 'none'}\n")
        resume = request.headers.get(RESUME_HEADER) if SUBPROTOCOL_V2 in offered and SUBPROTOCOL_V2 in self._subprotocols \
            else None
        decision = await admit(service, address, resume)
        if isinstance(decision, Refusal):
            return _response(decision.status, decision.text)
        connection.admission = decision  # the session to resume, or None
        connection.identity = credentials.identity
        return None

    def _credentials(self, connection: DirectServerConnection, request: Request) -> Credentials:
        """The token and certificate identity an agent presents: from our own TLS, else from a trusted proxy.

        Identity headers are believed only from ``trusted_proxies`` (nginx
        overwrites them, see nginx.conf); from anyone else they are ignored.
        """
        authorization = request.headers.get("Authorization", "")
        ssl_object = connection.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                try:
                    return Credentials(authorization, from_certificate(der, "tls"))
                except CertificateError as exc:  # verified by OpenSSL, so hardly possible
                    return Credentials(authorization, None, f"unreadable client certificate: {exc}")
        if not self._is_trusted(connection):
            why = ("no client certificate (tls.client_ca is not set)" if ssl_object is not None else
                   "not a trusted proxy (trusted_proxies), so its identity headers are ignored")
            return Credentials(authorization, None, why)
        identity, why = from_proxy_headers(request.headers)
        return Credentials(authorization, identity, why)

    def _is_trusted(self, connection: DirectServerConnection) -> bool:
        peer = connection.remote_address
        try:
            direct = ipaddress.ip_address(peer[0] if isinstance(peer, tuple) else str(peer))
        except ValueError:
            return False
        return any(direct in net for net in self._trusted)

    async def _handle_agent(self, connection: DirectServerConnection) -> None:
        request = connection.request
        assert request is not None
        service = self.services.get(unquote(urlsplit(request.path).path)[len(AGENT_PATH_PREFIX):])
        if service is None:  # removed by a reload since _route let it through
            await connection.close(CLOSE_GOING_AWAY, "service removed from the config")
            return
        address = self._client_address(connection, request)
        agent = request.headers.get("User-Agent", "")
        version = agent.split("/", 1)[1] if agent.startswith("reverse_websockify_agent/") else agent[:100]
        protocol_version = VERSIONS.get(connection.subprotocol or "", 1)
        keep = int(self.config.resume_seconds)
        resumed = connection.admission
        identity = connection.identity
        if isinstance(resumed, Tunnel) and service.tunnel is resumed and not resumed.closed and protocol_version >= 2:
            tunnel = resumed
            service.resume(tunnel, address, version, identity)
            tunnel.session.start(_hello(True, keep, tunnel.session.hello.session_id if tunnel.session.hello else b""))
        else:
            tunnel = Tunnel(
                role="server",
                service_id=service.service_id,
                version=protocol_version,
                window=INITIAL_WINDOW,
                max_streams=self.config.max_streams_per_agent,
                open_timeout=self.config.open_timeout,
                stats=service.stats,
                receive_budget=self.config.receive_budget,
            )
            if protocol_version >= 2:
                tunnel.session.start(_hello(False, keep))
            service.attach(tunnel, address, version, identity)
        kept = False
        self.keepalive.watch(connection)
        try:
            kept = await tunnel.run(connection)
        except Exception:  # a bug: log it here, websockets' own logger is quiet
            log.exception("service %s: tunnel failed", service.service_id)
            raise
        finally:
            self.keepalive.forget(connection)
            service.link_ended(tunnel, kept)


def _hello(resumed: bool, resume_seconds: int, session_id: bytes = b"") -> Hello:
    """HELLO with a fresh secret: a resume rotates it, so a secret seen once cannot resume twice."""
    return Hello(resumed, resume_seconds, session_id or secrets.token_bytes(SESSION_ID_SIZE),
                 secrets.token_bytes(SECRET_SIZE))
