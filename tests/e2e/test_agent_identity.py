"""Each agent's certificate opens its own service only, and a lost certificate can be revoked (issue 12).

Certificates come from the shipped scripts (make-server-cert.sh, make-client-cert.sh NAME,
revoke-client-cert.sh); agents are the real agent program; behind the shipped nginx.conf (TLS,
client certificates, CRL, identity headers) or with the server terminating TLS itself ([tls]).
Both services are bound (``agent_identity``), as the shipped config.toml binds its examples.

The loopback has many addresses: nginx reaches the server from 127.0.0.2 (``proxy_bind``) and only
that address is a trusted proxy, so a client on 127.0.0.1 that talks to the server directly is
an untrusted peer whose identity headers must be ignored.
"""

from __future__ import annotations

import os
import signal
import ssl
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

from tests.support.certs import make_client_cert, make_server_cert, revoke_client_cert
from tests.support.clients import Exchange, sha256, transfer
from tests.support.deployment import Deployment
from tests.support.nginx import SHIPPED_SITE, ShippedNginx
from tests.support.ports import free_port
from tests.support.processes import Process
from tests.support.services import Service
from tests.support.waiting import wait_for
from tests.support.websocket import handshake_status

MIB = 1 << 20
PROXY_SOURCE = "127.0.0.2"  # where nginx connects to the server from: the only trusted proxy


class Fleet:
    """Two bound services, bus01 and bus02, each agent with its own certificate, behind nginx or [tls]."""

    def __init__(self, tmp: Path, mode: str) -> None:
        self.tmp, self.mode = tmp, mode
        self.tls_dir = make_server_cert(tmp / "tls", "127.0.0.1")
        self.agent_dirs = {name: make_client_cert(tmp / name, self.tls_dir, name) for name in ("bus01", "bus02")}
        rogue_tls = make_server_cert(tmp / "rogue-tls", "127.0.0.1")
        self.rogue_dir = make_client_cert(tmp / "rogue-bus02", rogue_tls, "bus02")  # right name, other CA
        crl = self.tls_dir / "crl.pem"
        extra = [f'client_crl = "{crl}"', "agent_wait_seconds = 0"]
        if mode == "tls":
            extra += ["[tls]", f'cert = "{self.tls_dir / "server.cert.pem"}"', f'key = "{self.tls_dir / "server.key.pem"}"',
                      f'client_ca = "{self.tls_dir / "server.cert.pem"}"']
        else:
            extra.insert(0, f'trusted_proxies = ["{PROXY_SOURCE}/32"]')
        self.deployment = Deployment(tmp=tmp, services={"bus01": free_port(), "bus02": free_port()},
                                     http_port=free_port(), extra_config="\n".join(extra), options=["--log-format=json"],
                                     service_config={sid: f'agent_identity = "{sid}"' for sid in ("bus01", "bus02")})
        if mode == "tls":
            self.deployment.client_ssl = self.client_context("bus02")
        self.deployment.start_server()
        self.nginx: ShippedNginx | None = None
        if mode == "nginx":
            site = tmp / "nginx-site.conf"
            site.write_text(SHIPPED_SITE.read_text().replace(
                "location /forward_to_me/ {", f"location /forward_to_me/ {{\n        proxy_bind {PROXY_SOURCE};", 1))
            self.nginx = ShippedNginx(tmp, self.tls_dir, self.deployment.http_port, site)

    @property
    def server(self) -> Process:
        assert self.deployment.server is not None
        return self.deployment.server

    @property
    def agent_port(self) -> int:
        """Where agents connect: nginx's 443, or the server itself."""
        return self.nginx.https_port if self.nginx else self.deployment.http_port

    def url(self, sid: str) -> str:
        return f"wss://127.0.0.1:{self.agent_port}/forward_to_me/{sid}"

    def client_context(self, name: str, agent_dir: Path | None = None) -> ssl.SSLContext:
        agent_dir = agent_dir or self.agent_dirs[name]
        context = ssl.create_default_context(cafile=str(self.tls_dir / "server.cert.pem"))
        context.check_hostname = False  # CN=127.0.0.1 without SAN: the agent checks it, urllib cannot
        context.load_cert_chain(agent_dir / "client.cert.pem", agent_dir / "client.key.pem")
        return context

    def start_agent(self, sid: str, port: int, cert: str | Path, *, wait: bool = True) -> Process:
        agent_dir = self.agent_dirs[cert] if isinstance(cert, str) else cert
        return self.deployment.start_agent(
            sid, port, f"--ca-cert={self.tls_dir / 'server.cert.pem'}",
            f"--client-cert={agent_dir / 'client.cert.pem'}", f"--client-key={agent_dir / 'client.key.pem'}",
            url=self.url(sid), wait=wait, name=f"agent {sid} with {agent_dir.name}'s certificate")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.deployment.base_url}/metrics", timeout=10,
                                    context=self.deployment.client_ssl) as response:
            return response.read().decode()

    def revoke(self, name: str) -> None:
        """What the operator does: the shipped script, then nginx -s reload and SIGHUP to the server."""
        revoke_client_cert(self.tls_dir, self.agent_dirs[name] / "client.cert.pem")
        if self.nginx is not None:
            self.nginx.command("-s", "reload")
        self.server.signal(signal.SIGHUP)

    def stop(self) -> None:
        self.deployment.stop()
        if self.nginx is not None:
            self.nginx.stop()


@pytest.fixture(params=["nginx", "tls"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path, request.param)
    yield f
    f.stop()


def _refusal_line(fleet: Fleet, sid: str, presented: str, reason: str) -> str:
    """The server's one log line for a refused attach: names the service, the identity and the peer."""
    line = fleet.server.wait_line(lambda m: "refused (403)" in m and presented in m, service=sid, reason=reason,
                                  timeout=15)
    return str(line["message"])


def test_a_certificate_opens_its_own_service_only(fleet: Fleet, echo: Service) -> None:
    deployment = fleet.deployment
    # bus01's certificate on bus02's ID: 403, one line naming the service, the identity and the peer.
    thief = fleet.start_agent("bus02", echo.port, "bus01", wait=False)
    thief.wait_log("HTTP 403")
    assert "bound to agent_identity 'bus02'" in thief.log() and "certificate is for bus01" in thief.log()
    message = _refusal_line(fleet, "bus02", "certificate bus01", "identity mismatch")
    assert "agent 127.0.0.1" in message  # the agent's address (X-Real-Ip behind nginx), not nginx's
    assert not deployment.status()["bus02"]["connected"]
    assert 'reverse_websockify_agent_refusals_total{reason="identity mismatch",service="bus02"}' in fleet.metrics()
    thief.stop()
    deployment.agents.remove(thief)

    # The same certificate on its own ID, and bus02's on bus02: both relay, each shows who it is.
    fleet.start_agent("bus01", echo.port, "bus01")
    fleet.start_agent("bus02", echo.port, "bus02")
    status = deployment.status()
    assert (status["bus01"]["agent_identity"], status["bus02"]["agent_identity"]) == ("bus01", "bus02")
    assert status["bus01"]["agent_certificate_serial"] != status["bus02"]["agent_certificate_serial"]
    assert 'reverse_websockify_agent_identity_info{identity="bus02",service="bus02"} 1.0' in fleet.metrics()
    for sid in ("bus01", "bus02"):
        payload = os.urandom(MIB)
        assert sha256(transfer(deployment.services[sid], payload)) == sha256(payload)

    # The right name from another CA: refused in the TLS handshake (nginx's 400, or [tls]'s alert).
    rogue = fleet.start_agent("bus02", echo.port, fleet.rogue_dir, wait=False)
    rogue.wait_log("SSL certificate error" if fleet.nginx else "refuse this one")
    assert deployment.status()["bus02"]["agent_identity"] == "bus02"
    assert "services without agent_identity" not in fleet.server.log()  # both are bound: no warning

    # A service added without a binding or token, while client certificates are in use: named at reload.
    deployment.services["open"] = free_port()
    deployment.write_config()
    fleet.server.signal(signal.SIGHUP)
    line = fleet.server.wait_line(lambda m: "services without agent_identity or token: open;" in m)
    assert line["level"] == "WARNING"


def test_identity_headers_only_from_a_trusted_proxy(fleet: Fleet, echo: Service) -> None:
    deployment = fleet.deployment
    bus02_pem = (fleet.agent_dirs["bus02"] / "client.cert.pem").read_text()
    spoofed = {"X-Client-Verify": "SUCCESS", "X-Client-Cert": quote(bus02_pem, safe="")}
    path = "/forward_to_me/bus02"
    if fleet.mode == "nginx":
        # Straight to the server from an untrusted address: the headers are ignored.
        status, body = handshake_status(deployment.http_port, path, spoofed, source="127.0.0.1")
        assert status == 403
        fleet.server.wait_line(lambda m: "not a trusted proxy" in m, service="bus02", reason="no identity", timeout=10)
        # Through nginx with bus01's certificate: nginx overwrites the headers with what it verified.
        status, body = handshake_status(fleet.agent_port, path, spoofed, context=fleet.client_context("bus01"))
        assert status == 403
        _refusal_line(fleet, "bus02", "certificate bus01", "identity mismatch")
        # From the trusted proxy's address the same headers are believed: that is how nginx speaks.
        status, _ = handshake_status(deployment.http_port, path, spoofed, source=PROXY_SOURCE)
        assert status == 101
        fleet.server.wait_line(lambda m: "agent connected" in m and "certificate bus02" in m, service="bus02")
    else:
        # [tls]: the certificate of the TLS handshake is the identity; headers change nothing,
        # even from a trusted_proxies address (loopback, by default).
        status, _ = handshake_status(deployment.http_port, path, spoofed, context=fleet.client_context("bus01"))
        assert status == 403
        _refusal_line(fleet, "bus02", "certificate bus01", "identity mismatch")
        status, _ = handshake_status(deployment.http_port, path, spoofed, context=fleet.client_context("bus02"))
        assert status == 101


def test_a_revoked_certificate_is_cut_off_and_no_one_else(fleet: Fleet, echo: Service) -> None:
    deployment = fleet.deployment
    lost = fleet.start_agent("bus01", echo.port, "bus01")
    fleet.start_agent("bus02", echo.port, "bus02")
    connects_before = deployment.status()["bus02"]["streams_opened_total"]
    payload = os.urandom(24 * MIB)
    exchange = Exchange(deployment.services["bus02"], payload, pace=0.01, timeout=60)  # ~4 s of traffic
    wait_for(lambda: len(exchange.received) > 2 * MIB, 15, "bytes flowing through bus02")

    fleet.revoke("bus01")

    fleet.server.wait_line(lambda m: "cutting off" in m and "revoked" in m, service="bus01", close_code=1008,
                           timeout=15)
    lost.wait_log("1008")
    assert len(exchange.received) < len(payload), "bus02's transfer ended before the revocation took effect"
    wait_for(lambda: not deployment.status()["bus01"]["connected"], 10, "bus01 to be cut off")
    # It keeps retrying, and the handshake now refuses its certificate (nginx's ssl_crl, or [tls]'s).
    mark = len(lost.log())
    wait_for(lambda: ("SSL certificate error" if fleet.nginx else "refuse this one") in lost.log()[mark:], 20,
             "the revoked agent's next attempt to be refused")
    assert exchange.join() == "complete" and sha256(bytes(exchange.received)) == sha256(payload)
    status = deployment.status()
    assert status["bus02"]["connected"] and status["bus02"]["streams_opened_total"] == connects_before + 1
    assert status["bus02"]["last_disconnect_reason"] is None  # bus02's tunnel never dropped
    assert not status["bus01"]["connected"]
