"""The reference deployment end to end: seed certificates, shipped nginx.conf, wss with client certs."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.certs import agent_tls_flags, make_client_cert, make_server_cert
from tests.support.clients import sha256, transfer
from tests.support.deployment import Deployment
from tests.support.nginx import ShippedNginx
from tests.support.ports import free_port
from tests.support.services import Service
from tests.support.tinyproxy import Tinyproxy
from tests.support.waiting import wait_for

MIB16 = 16 * 1024 * 1024


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(tmp=tmp_path, services={"BUS1": free_port()}, http_port=free_port(),
                   extra_config="agent_wait_seconds = 0")
    yield d
    d.stop()


def _pki(tmp_path: Path, cn: str, name: str = "pki") -> tuple[Path, Path]:
    """(server tls dir, agent dir) made by the shipped scripts, i.e. the seed's openssl commands."""
    server_dir = make_server_cert(tmp_path / name / "tls", cn)
    agent_dir = make_client_cert(tmp_path / name / "agent", server_dir)
    return server_dir, agent_dir


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator:
    started: list[ShippedNginx] = []

    def start(tls_dir: Path, upstream: int, site_conf: Path | None = None) -> ShippedNginx:
        n = ShippedNginx(tmp_path, tls_dir, upstream, site_conf)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def _no_relay(deployment: Deployment) -> None:
    """A user connection finds no agent: it is closed, nothing relayed."""
    assert not deployment.status()["BUS1"]["connected"]
    try:
        with socket.create_connection(("127.0.0.1", deployment.services["BUS1"]), timeout=5) as user:
            user.sendall(b"hello?")
            assert user.recv(10) == b""
    except (ConnectionResetError, BrokenPipeError):  # the server resets it, maybe before connect() returns
        pass


@pytest.mark.parametrize("cn,host,extra", [
    ("127.0.0.1", "127.0.0.1", []),                                   # an IP in the CN, no SAN
    ("localhost", "localhost", []),                                   # a host name in the CN
    ("my.rendezvous.com", "127.0.0.1", ["--tls-server-name=my.rendezvous.com"]),
])
def test_full_chain_through_nginx(tmp_path: Path, deployment: Deployment, echo: Service, nginx_factory,
                                  cn: str, host: str, extra: list[str]) -> None:
    tls_dir, agent_dir = _pki(tmp_path, cn)
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    url = f"wss://{host}:{nginx.https_port}/forward_to_me/BUS1"
    agent = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), *extra, url=url)
    payload = os.urandom(MIB16)
    assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)
    # The status page through nginx's plain-HTTP (intranet) block, with the agent's real address.
    with urllib.request.urlopen(f"http://127.0.0.1:{nginx.http_port}/", timeout=5) as response:
        status = json.loads(response.read())["BUS1"]
    assert status["connected"] is True
    assert status["agent_address"] == "127.0.0.1"  # from X-Real-Ip, not nginx's own 127.0.0.1:<port>
    assert status["bytes_to_service"] == MIB16
    assert "WARNING" not in agent.log()


def test_status_not_served_on_443(tmp_path: Path, deployment: Deployment, nginx_factory) -> None:
    import ssl

    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    context = ssl.create_default_context(cafile=str(agent_dir / "server.cert.pem"))
    context.check_hostname = False
    context.load_cert_chain(agent_dir / "client.cert.pem", agent_dir / "client.key.pem")
    for path in ("/", "/metrics", "/healthz", "/ready/BUS1"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"https://127.0.0.1:{nginx.https_port}{path}", context=context, timeout=5)
        assert refused.value.code == 404


def test_agent_without_client_certificate_refused_by_nginx(tmp_path: Path, deployment: Deployment,
                                                           echo: Service, nginx_factory) -> None:
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    agent = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir, client=False), wait=False,
                                   url=f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/BUS1")
    agent.wait_log("HTTP 400")
    assert "No required SSL certificate was sent" in agent.log()
    _no_relay(deployment)


def test_client_certificate_from_another_ca_refused(tmp_path: Path, deployment: Deployment, echo: Service,
                                                    nginx_factory) -> None:
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    _, rogue_dir = _pki(tmp_path, "127.0.0.1", "rogue")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    agent = deployment.start_agent(
        "BUS1", echo.port, f"--ca-cert={agent_dir / 'server.cert.pem'}",
        f"--client-cert={rogue_dir / 'client.cert.pem'}", f"--client-key={rogue_dir / 'client.key.pem'}",
        wait=False, url=f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/BUS1")
    agent.wait_log("HTTP 400")
    assert "SSL certificate error" in agent.log()
    _no_relay(deployment)


def test_server_certificate_from_another_ca_refused(tmp_path: Path, deployment: Deployment, echo: Service,
                                                    nginx_factory) -> None:
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    _, rogue_dir = _pki(tmp_path, "127.0.0.1", "rogue")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    agent = deployment.start_agent(
        "BUS1", echo.port, f"--ca-cert={rogue_dir / 'server.cert.pem'}",  # trusts another CA
        f"--client-cert={agent_dir / 'client.cert.pem'}", f"--client-key={agent_dir / 'client.key.pem'}",
        wait=False, url=f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/BUS1")
    agent.wait_log("server certificate rejected")
    assert "certificate verify failed" in agent.log() or "self-signed" in agent.log() or "self signed" in agent.log()
    agent.wait_log("reconnecting in")  # retried with backoff
    _no_relay(deployment)


@pytest.mark.parametrize("cn,host", [("other.example", "127.0.0.1"), ("10.9.8.7", "127.0.0.1"),
                                     ("other.example", "localhost")])
def test_name_mismatch_refused_and_insecure_connects_with_warning(tmp_path: Path, deployment: Deployment,
                                                                  echo: Service, nginx_factory,
                                                                  cn: str, host: str) -> None:
    tls_dir, agent_dir = _pki(tmp_path, cn)
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    url = f"wss://{host}:{nginx.https_port}/forward_to_me/BUS1"
    agent = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), wait=False, url=url)
    agent.wait_log("server certificate rejected")
    assert host in agent.log().split("server certificate rejected", 1)[1].splitlines()[0]
    _no_relay(deployment)
    agent.stop()
    deployment.agents.remove(agent)
    insecure = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), "--insecure", url=url)
    assert "WARNING" in insecure.log() and "--insecure" in insecure.log()
    assert transfer(deployment.services["BUS1"], b"insecure but working") == b"insecure but working"


@pytest.mark.parametrize("how", ["missing", "wrong"])
def test_token_refused_with_401(tmp_path: Path, deployment: Deployment, echo: Service, how: str) -> None:
    deployment.write_config()
    deployment.config_path.write_text(deployment.config_path.read_text() + 'token = "s3cret-token"\n')
    server = deployment.start_server()
    extra = [] if how == "missing" else ["--token=not-it"]
    agent = deployment.start_agent("BUS1", echo.port, *extra, wait=False)
    agent.wait_log("HTTP 401")
    server.wait_log(f"refused (401): {how} token")
    _no_relay(deployment)
    assert "s3cret-token" not in server.log() and "s3cret-token" not in json.dumps(deployment.status())


@pytest.mark.parametrize("how", ["flag", "file", "env"])
def test_token_accepted(tmp_path: Path, deployment: Deployment, echo: Service, how: str) -> None:
    deployment.write_config()
    deployment.config_path.write_text(deployment.config_path.read_text() + 'token = "s3cret-token"\n')
    deployment.start_server()
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    env = None
    extra: list[str] = []
    if how == "flag":
        extra = ["--token=s3cret-token"]
    elif how == "file":
        extra = [f"--token-file={token_file}"]
    else:
        env = dict(os.environ, REVERSE_WEBSOCKIFY_TOKEN="s3cret-token")
    agent = deployment.start_agent("BUS1", echo.port, *extra, env=env)
    assert transfer(deployment.services["BUS1"], b"with token") == b"with token"
    assert "s3cret-token" not in agent.log() and "s3cret-token" not in deployment.server.log()  # type: ignore[union-attr]


def test_through_tinyproxy_with_https_proxy(tmp_path: Path, deployment: Deployment, echo: Service,
                                            nginx_factory) -> None:
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    proxy = Tinyproxy(tmp_path)
    try:
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "https_proxy", "http_proxy")}
        env["HTTPS_PROXY"] = f"http://127.0.0.1:{proxy.port}"
        url = f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/BUS1"
        agent = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), url=url, env=env)
        payload = os.urandom(MIB16)
        assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)
        wait_for(lambda: f"127.0.0.1:{nginx.https_port}" in proxy.log(), 5, "tinyproxy to log the CONNECT")
        assert f"through proxy http://127.0.0.1:{proxy.port}" in agent.log()
        # NO_PROXY bypasses it.
        agent.stop()
        deployment.agents.remove(agent)
        before = proxy.log().count("CONNECT")
        env["NO_PROXY"] = "127.0.0.1"
        deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), url=url, env=env)
        assert transfer(deployment.services["BUS1"], b"direct") == b"direct"
        assert proxy.log().count("CONNECT") == before
    finally:
        proxy.stop()


def test_server_terminates_tls_with_client_ca(tmp_path: Path, deployment: Deployment, echo: Service) -> None:
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    deployment.extra_config += (f'\n[tls]\ncert = "{tls_dir / "server.cert.pem"}"\nkey = "{tls_dir / "server.key.pem"}"\n'
                                f'client_ca = "{tls_dir / "server.cert.pem"}"\n')
    import ssl

    context = ssl.create_default_context(cafile=str(agent_dir / "server.cert.pem"))
    context.load_cert_chain(agent_dir / "client.cert.pem", agent_dir / "client.key.pem")
    context.check_hostname = False  # CN=127.0.0.1 without SAN: the agent checks it, urllib cannot
    deployment.client_ssl = context
    deployment.start_server()
    url = f"wss://127.0.0.1:{deployment.http_port}/forward_to_me/BUS1"
    agent = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), url=url)
    payload = os.urandom(MIB16)
    assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)
    agent.stop()
    deployment.agents.remove(agent)
    refused = deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir, client=False), url=url,
                                     wait=False)
    refused.wait_log("it may require a client certificate")
    _no_relay(deployment)


def test_original_readme_nginx_conf_verbatim(tmp_path: Path, deployment: Deployment, echo: Service,
                                             nginx_factory) -> None:
    """Users upgrading from the Go original keep their nginx.conf: it must work unchanged."""
    tls_dir, agent_dir = _pki(tmp_path, "127.0.0.1")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port, Path(__file__).with_name("original-nginx.conf"))
    url = f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/BUS1"
    deployment.start_agent("BUS1", echo.port, *agent_tls_flags(agent_dir), url=url)
    payload = os.urandom(MIB16)
    assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)
    with urllib.request.urlopen(f"http://127.0.0.1:{nginx.http_port}/", timeout=5) as response:
        status = json.loads(response.read())["BUS1"]
    assert status["connected"] is True and status["bytes_to_service"] == MIB16
    assert status["agent_address"] == "127.0.0.1"  # the original conf sets X-Real-Ip too
