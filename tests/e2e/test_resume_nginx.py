"""Protocol v2 sessions on the reference deployment: nginx restarted in the middle of a transfer.

agent --(wss, client certificate)--> real nginx (the shipped nginx.conf, certificates from the
shipped scripts) --> server. A user sends a payload to the echo behind the agent while reading it
back; nginx is restarted under it. Every restart takes the agent's WebSocket down on both sides
(nginx's sockets close with its processes): agent and server keep the session detached
(``resume_seconds``, 60 s by default), the agent reconnects once nginx listens again, and the
transfer carries on, byte-exact, on the same user connection and the same service connection.

``nginx -s reload`` is different: the old worker keeps the WebSockets it carries until they end,
or until ``worker_shutdown_timeout`` if one is set; only then is the session resumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import probes
from tests.support.certs import make_client_cert, make_server_cert
from tests.support.clients import Exchange, sha256
from tests.support.deployment import Deployment
from tests.support.nginx import ShippedNginx
from tests.support.ports import accepts_connections
from tests.support.processes import Process, ProcessDied
from tests.support.services import Service
from tests.support.waiting import wait_for

MIB = 1 << 20
FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
# The user's pace: 256 KiB every 40 ms (<= 6.4 MiB/s), so that the transfer lasts long enough for
# every restart to land while bytes are in flight both ways.
CHUNK, PACE = 256 * 1024, 0.04
RESUME_BOUND = 10.0  # seconds from nginx listening again to the session resumed (backoff 0.5..2 s + slack)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for init to reap it counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class RestartableNginx:
    """The shipped nginx.conf in front of the server, stopped and started again on the same ports."""

    def __init__(self, tmp: Path, tls_dir: Path, upstream_port: int) -> None:
        self.nginx = ShippedNginx(tmp, tls_dir, upstream_port)
        self.starts = 1

    @property
    def https_port(self) -> int:
        return self.nginx.https_port

    @property
    def http_port(self) -> int:
        return self.nginx.http_port

    @property
    def master(self) -> Process:
        return self.nginx.process

    def workers(self) -> list[int]:
        return probes.children(self.master.pid)

    def command(self, *args: str) -> None:
        """``nginx -p ... -c ... <args>``, e.g. ``-s stop``, ``-s reload``."""
        self.nginx.command(*args)

    def stop_fast(self) -> None:
        """``nginx -s stop``: SIGTERM to the master, a fast shutdown: workers exit, dropping every connection."""
        self.command("-s", "stop")
        self.master.proc.wait(10)
        self.master.stop()  # closes its log

    def kill_all(self) -> None:
        """SIGKILL to the master, then to its workers (a crash, the OOM killer, ``docker kill``)."""
        workers = self.workers()
        assert workers, "nginx has no worker"
        self.master.kill()  # first: a dead master does not start a worker again
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_for(lambda: all(_gone(pid) for pid in workers), 10, "nginx's workers to die")
        self.master.stop()

    def start(self) -> None:
        """The same command line again: same config, same ports."""
        assert not self.master.alive()
        self.starts += 1
        self.nginx.process = Process(self.nginx.args, self.nginx.dir / f"nginx-{self.starts}.out", name="nginx",
                                     launcher=False)
        wait_for(self._up, 10, "nginx to listen again")

    def _up(self) -> bool:
        if not self.master.alive():
            raise ProcessDied(f"nginx exited: {self.master.log()}{self.nginx.error_log()[-3000:]}")
        return accepts_connections(self.https_port)

    def status(self) -> dict:
        """The status page through nginx's plain-HTTP (intranet) block."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/", timeout=5) as response:
            return json.loads(response.read())["BUS1"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.nginx.stop()


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator:
    started: list[RestartableNginx] = []

    def start(tls_dir: Path, upstream: int) -> RestartableNginx:
        n = RestartableNginx(tmp_path, tls_dir, upstream)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()


def _chain(tmp_path: Path, deployment: Deployment, echo: Service, nginx_factory,
           worker_shutdown_timeout: int | None = None) -> tuple[RestartableNginx, Process]:
    """Server, nginx with TLS and client certificates, the agent through it (wss:// as a user deploys it).

    ``worker_shutdown_timeout``: added to nginx.conf's main context (taken in by a reload before the
    agent attaches).
    """
    tls_dir = make_server_cert(tmp_path / "pki" / "tls", "localhost")
    agent_dir = make_client_cert(tmp_path / "pki" / "agent", tls_dir)
    deployment.extra_config = FAST_KEEPALIVE_CONFIG  # resume_seconds: the default (60 s)
    deployment.write_config()
    deployment.options.append("--log-format=json")
    deployment.start_server()
    nginx = nginx_factory(tls_dir, deployment.http_port)
    if worker_shutdown_timeout is not None:
        conf = nginx.nginx.dir / "nginx.conf"
        conf.write_text(conf.read_text().replace(
            "daemon off;", f"daemon off;\nworker_shutdown_timeout {worker_shutdown_timeout}s;"))
        first = nginx.workers()
        nginx.command("-s", "reload")
        wait_for(lambda: nginx.workers() and not set(nginx.workers()) & set(first), 10, "the reloaded worker")
    url = f"wss://localhost:{nginx.https_port}/forward_to_me/BUS1"
    agent = deployment.start_agent("BUS1", echo.port, f"--ca-cert={agent_dir / 'server.cert.pem'}",
                                   f"--client-cert={agent_dir / 'client.cert.pem'}",
                                   f"--client-key={agent_dir / 'client.key.pem'}", *FAST_KEEPALIVE_FLAGS, url=url)
    return nginx, agent


def _in_flight(exchange: Exchange, echo: Service, at_least: int) -> None:
    """Wait until the echo has ``at_least`` bytes; the transfer must still be going on, both ways."""
    wait_for(lambda: echo.bytes_received >= at_least or exchange.outcome != "running", 30,
             f"{at_least} bytes at the echo")
    assert exchange.outcome == "running", f"the user connection ended: {exchange.outcome}"
    assert echo.bytes_received < len(exchange.payload), "the transfer ended before the restart"
    assert len(exchange.received) < len(exchange.payload)


def _resumed(deployment: Deployment, count: int, timeout: float) -> float:
    """Wait until the server counts ``count`` resumes; the time it happened."""
    wait_for(lambda: deployment.status()["BUS1"]["sessions_resumed"] >= count, timeout, f"resume #{count}", 0.02)
    return time.monotonic()


def _sent_again(process: Process, since: int = 0) -> list[int]:
    """The bytes sent again at each resume, from the "session resumed ... N bytes sent again" lines."""
    return [int(re.search(r"(\d+) bytes sent again", line["message"]).group(1))  # type: ignore[union-attr]
            for line in process.find_lines("session resumed", since=since)]


def _finish(exchange: Exchange, echo: Service) -> float:
    outcome = exchange.join()
    assert outcome == "complete", f"{outcome} after {len(exchange.received)} of {len(exchange.payload)} bytes"
    assert exchange.closed_at is not None
    assert sha256(bytes(exchange.received)) == sha256(exchange.payload)
    assert echo.bytes_received == len(exchange.payload)
    return exchange.closed_at


def test_nginx_restarted_twice_mid_transfer_byte_exact(tmp_path: Path, deployment: Deployment, echo: Service,
                                                        nginx_factory) -> None:
    nginx, agent = _chain(tmp_path, deployment, echo, nginx_factory)
    server = deployment.server
    assert server is not None
    payload = os.urandom(48 * MIB)
    started = time.monotonic()
    exchange = Exchange(deployment.services["BUS1"], payload, chunk=CHUNK, pace=PACE, timeout=60)
    figures: list[str] = []
    threshold = 8 * MIB
    for number, (how, restart) in enumerate([("nginx -s stop", nginx.stop_fast), ("SIGKILL", nginx.kill_all)], 1):
        _in_flight(exchange, echo, threshold)
        agent_mark, server_mark = agent.mark(), server.mark()
        old_workers = nginx.workers()
        down_at = time.monotonic()
        restart()
        assert all(_gone(pid) for pid in old_workers)
        # Both sides lost the link, and keep the session: the user's connection stays open, paused.
        lost = agent.wait_line("keeping 1 streams", since=agent_mark, timeout=5)
        assert lost["level"] == "WARNING"
        wait_for(lambda: not deployment.status()["BUS1"]["connected"], 5, "the server to detach the session")
        assert deployment.status()["BUS1"]["paused_streams"] == 1
        # The agent tries again at once, while nginx is down: refused.
        agent.wait_line("cannot connect", since=agent_mark, timeout=5)
        assert exchange.outcome == "running"
        nginx.start()
        up_at = time.monotonic()
        resumed_at = _resumed(deployment, number, RESUME_BOUND + 5)
        line = agent.wait_line("session resumed", since=agent_mark, timeout=5)
        assert "1 streams kept" in line["message"], line
        assert resumed_at - up_at < RESUME_BOUND, resumed_at - up_at
        figures.append(f"{how}: nginx down {up_at - down_at:.2f} s, the session resumed {resumed_at - up_at:.2f} s "
                       f"after nginx listened again, {resumed_at - down_at:.2f} s after the link was lost; "
                       f"sent again: server {_sent_again(server, server_mark)}, agent {_sent_again(agent, agent_mark)}")
        threshold = echo.bytes_received + 8 * MIB  # the next restart with bytes flowing through the new nginx
    closed_at = _finish(exchange, echo)
    figures.append(f"48 MiB byte-exact in {closed_at - started:.1f} s")
    print("\n" + "\n".join(figures))

    status = deployment.status()["BUS1"]
    assert status["sessions_resumed"] == 2
    assert status["connected"] and status["agent_address"] == "127.0.0.1"  # X-Real-Ip, from the restarted nginx
    assert status["bytes_to_service"] == len(payload)
    assert nginx.status()["sessions_resumed"] == 2  # and the status page through the restarted nginx
    assert echo.accepted == 1  # one service connection all along: the stream was never opened again
    assert len(agent.find_lines("session resumed")) == 2
    assert len(server.find_lines("session resumed")) == 2
    assert not agent.find_lines("given up") and not agent.find_lines("could not resume")
    assert not server.find_lines("dropped") and not server.find_lines("expired", reason="session expired")
    assert time.monotonic() - started < 45


def test_nginx_reload_keeps_the_tunnel_until_worker_shutdown_timeout(tmp_path: Path, deployment: Deployment,
                                                                     echo: Service, nginx_factory) -> None:
    """A reload is graceful: the old worker carries the tunnel on, until worker_shutdown_timeout; then it resumes."""
    shutdown_timeout = 2
    nginx, agent = _chain(tmp_path, deployment, echo, nginx_factory, worker_shutdown_timeout=shutdown_timeout)
    payload = os.urandom(32 * MIB)
    started = time.monotonic()
    exchange = Exchange(deployment.services["BUS1"], payload, chunk=CHUNK, pace=PACE, timeout=60)
    _in_flight(exchange, echo, 6 * MIB)
    old_workers = nginx.workers()
    nginx.command("-s", "reload")
    reloaded_at = time.monotonic()
    # The old worker shuts down gracefully: it keeps the tunnel, and bytes go on flowing through it.
    wait_for(lambda: set(nginx.workers()) - set(old_workers), 10, "the reload's new worker")
    before = echo.bytes_received
    time.sleep(shutdown_timeout / 2)
    assert not all(_gone(pid) for pid in old_workers), "the old worker left at once"
    assert deployment.status()["BUS1"]["sessions_resumed"] == 0
    assert echo.bytes_received > before, "no byte went through the old worker after the reload"
    # At worker_shutdown_timeout it closes the tunnel: the session resumes through the new worker.
    resumed_at = _resumed(deployment, 1, shutdown_timeout + RESUME_BOUND)
    assert resumed_at - reloaded_at >= shutdown_timeout * 0.9, resumed_at - reloaded_at
    line = agent.wait_line("session resumed", timeout=5)
    wait_for(lambda: all(_gone(pid) for pid in old_workers), 5, "the old worker to exit")
    closed_at = _finish(exchange, echo)
    print(f"\nreload: resumed {resumed_at - reloaded_at:.2f} s after the reload "
          f"(worker_shutdown_timeout {shutdown_timeout}s; {line['message']}); "
          f"32 MiB byte-exact in {closed_at - started:.1f} s")
    assert deployment.status()["BUS1"]["sessions_resumed"] == 1
    assert echo.accepted == 1
    assert len(agent.find_lines("session resumed")) == 1
