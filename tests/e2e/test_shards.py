"""Two shards behind real nginx (the shipped nginx-shards.conf and the generated map), wss + client certificates.

One command starts them (``reverse_websockify_server CONFIG --all-shards``); each agent dials nginx,
which sends it to the shard owning its ID; users are served by both shards; a shard killed with
SIGKILL comes back without disturbing the other shard's tunnels.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import probes
from tests.support.certs import agent_tls_flags, make_client_cert, make_server_cert
from tests.support.clients import Exchange, sha256, transfer
from tests.support.deployment import Deployment
from tests.support.nginx import ShippedNginx
from tests.support.services import Service
from tests.support.shards import OWNERS, shard_nginx, sharded, shards_up, wait_shards_up
from tests.support.waiting import wait_for
from tests.support.websocket import handshake_status


def get(url: str, accept: str = "application/json") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tls = make_server_cert(tmp / "pki" / "tls", "127.0.0.1")
        self.agent_dir = make_client_cert(tmp / "pki" / "agent", self.tls)
        self.deployment = sharded(tmp, extra_config="agent_wait_seconds = 5")
        self.echo = Service()
        self.nginx: ShippedNginx | None = None

    def start(self) -> None:
        d = self.deployment
        d.start_server("--all-shards")
        wait_shards_up(d)
        self.nginx = shard_nginx(d.tmp, self.tls, d)
        for sid in OWNERS:
            d.start_agent(sid, self.echo.port, *agent_tls_flags(self.agent_dir),
                          url=f"wss://127.0.0.1:{self.nginx.https_port}/forward_to_me/{sid}")

    def shard_pids(self, shard: int) -> list[int]:
        assert self.deployment.server is not None
        return probes.tree_pids_running(self.deployment.server.pid, "--shard", str(shard))

    def admin(self, path: str, accept: str = "application/json") -> tuple[int, bytes]:
        assert self.nginx is not None
        return get(f"http://127.0.0.1:{self.nginx.http_port}{path}", accept)

    def stop(self) -> None:
        self.deployment.stop()
        if self.nginx is not None:
            self.nginx.stop()
        self.echo.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def test_users_served_by_both_shards_through_nginx(fleet: Fleet) -> None:
    d = fleet.deployment
    payloads = {sid: os.urandom(4 << 20) for sid in OWNERS}
    for sid, payload in payloads.items():
        assert sha256(transfer(d.services[sid], payload)) == sha256(payload), sid
    # The merged status (nginx's port 80 -> --all-shards on http_server_endpoint): every service, its shard.
    code, body = fleet.admin("/")
    merged = json.loads(body)
    assert code == 200 and list(merged) == list(OWNERS)
    for sid, shard in OWNERS.items():
        assert merged[sid]["shard"] == shard and merged[sid]["connected"] is True, merged[sid]
        assert merged[sid]["bytes_to_service"] == 4 << 20
        assert merged[sid]["agent_address"] == "127.0.0.1"  # X-Real-Ip through nginx
    code, html = fleet.admin("/", "text/html")
    assert code == 200 and all(sid.encode() in html for sid in OWNERS) and b"3</b> of <b>3</b> services online" in html
    # Each shard's own page under /shard/<K>/ holds exactly the services it owns, each served by its own process.
    for shard in (0, 1):
        code, body = fleet.admin(f"/shard/{shard}/")
        assert code == 200 and set(json.loads(body)) == {s for s, k in OWNERS.items() if k == shard}
        code, body = fleet.admin(f"/shard/{shard}/metrics")
        assert code == 200 and b'reverse_websockify_agent_online{service="' in body
        assert len(fleet.shard_pids(shard)) >= 1
    code, body = fleet.admin("/metrics")
    assert code == 200 and b'reverse_websockify_shard_up{shard="1"} 1' in body
    assert b'reverse_websockify_agent_online{shard="1",service="BUS4"} 1.0' in body
    code, body = fleet.admin("/ready/BUS4")
    assert (code, body) == (200, b"agent attached\n")
    assert fleet.admin("/shards")[0] == 200


def test_shard_killed_other_shard_carries_on(fleet: Fleet) -> None:
    d = fleet.deployment
    before = json.loads(fleet.admin("/shard/0/")[1])["BUS1"]
    shard0 = fleet.shard_pids(0)
    # A paced 16 MiB transfer through shard 0 (at least 2.5 s), while shard 1 is killed and restarted.
    payload = os.urandom(16 << 20)
    exchange = Exchange(d.services["BUS1"], payload, chunk=64 << 10, pace=0.01, timeout=90)
    wait_for(lambda: len(exchange.received) > 1 << 20, 20, "the transfer through shard 0 to flow")
    killed = fleet.shard_pids(1)
    assert killed
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert exchange.outcome == "running", "the transfer must still be flowing when shard 1 dies"
    # The supervisor restarts shard 1; its agents come back through nginx by themselves.
    wait_for(lambda: (p := fleet.shard_pids(1)) and not set(p) & set(killed), 15, "shard 1 to be restarted")
    wait_shards_up(d)
    d.wait_attached(list(OWNERS), 30)
    assert exchange.join() == "complete", (exchange.outcome, len(exchange.received))
    assert sha256(bytes(exchange.received)) == sha256(payload)
    # Shard 0 never noticed: same process, same agent session, no disconnect.
    assert fleet.shard_pids(0) == shard0
    after = json.loads(fleet.admin("/shard/0/")[1])["BUS1"]
    assert after["service_connection_since"] == before["service_connection_since"]
    assert after["last_disconnect_reason"] is None and after["sessions_resumed"] == before["sessions_resumed"]
    # Shard 1 serves its users again, and the supervisor said what happened.
    payload = os.urandom(1 << 20)
    assert sha256(transfer(d.services["BUS4"], payload)) == sha256(payload)
    assert d.server is not None
    d.server.wait_log("shard 1: exited (killed by SIGKILL); restarting in 1 s")


def test_agent_sent_to_the_wrong_shard_is_refused(fleet: Fleet) -> None:
    d = fleet.deployment
    shard0 = d.shard_ports[0]  # type: ignore[attr-defined]
    code, body = handshake_status(shard0, "/forward_to_me/BUS4", {})
    assert code == 421, body
    assert body.startswith(b"service BUS4 belongs to shard 1 (127.0.0.1:"), body
    assert b"this is shard 0" in body
    assert d.server is not None
    d.server.wait_log("[shard 0]: agent 127.0.0.1")
    assert "refused (421): service BUS4 belongs to shard 1" in d.server.log()
    # A real agent pointed at the wrong shard says so in its log, and retries.
    agent = d.start_agent("BUS4", fleet.echo.port, url=f"ws://127.0.0.1:{shard0}/forward_to_me/BUS4", wait=False,
                          name="misdirected agent")
    agent.wait_log("421")
    assert "belongs to shard 1" in agent.log()
    # An ID no shard knows: 404 as ever; the attached agent of BUS4 (through nginx) is untouched.
    assert handshake_status(shard0, "/forward_to_me/NOPE", {})[0] == 404
    assert all(s["up"] for s in shards_up(d))
    assert d.status()["BUS4"]["connected"] is True
