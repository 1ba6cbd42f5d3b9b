"""[shards] without nginx: one shard alone (--shard K), the merged status with a shard down, a shard's SIGHUP.

The shards as systemd template units run them: each its own process, the merged status another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.clients import sha256, transfer
from tests.support.deployment import Deployment
from tests.support.ports import accepts_connections, free_ports, listening
from tests.support.processes import Process
from tests.support.programs import SERVER_NAME, command
from tests.support.services import Service
from tests.support.shards import OWNERS, sharded
from tests.support.waiting import wait_for


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = sharded(tmp_path, extra_config="agent_wait_seconds = 0")
    extra: list[Process] = []
    d.extra = extra  # type: ignore[attr-defined]
    yield d
    for process in extra:
        process.stop()
    d.stop()


def start(d: Deployment, *args: str, name: str) -> Process:
    process = Process(command(SERVER_NAME) + [str(d.config_path), *args], d.tmp / f"{name}.log", name=name)
    d.extra.append(process)  # type: ignore[attr-defined]
    return process


def test_one_shard_runs_only_its_own_services(deployment: Deployment, echo: Service) -> None:
    d = deployment
    d.write_config()
    shard1_port = d.shard_ports[1]  # type: ignore[attr-defined]
    shard1 = start(d, "--shard", "1", name="shard1")
    wait_for(lambda: shard1.check_alive() or accepts_connections(shard1_port), 15, f"shard 1: {shard1.log()}")
    # Asked of the kernel, not by connecting: with agent_wait_seconds = 0 the shard resets a user at once, and
    # a probe's connect() could read that reset as its own error (a CI run saw it).
    assert listening(d.services["BUS2"]) and listening(d.services["BUS4"])
    assert not listening(d.services["BUS1"])  # shard 0's, and shard 0 is not running
    assert not accepts_connections(d.http_port) and not accepts_connections(d.shard_ports[0])  # type: ignore[attr-defined]
    with urllib.request.urlopen(f"http://127.0.0.1:{shard1_port}/", timeout=10) as response:
        assert set(json.loads(response.read())) == {"BUS2", "BUS4"}
    d.start_agent("BUS4", echo.port, wait=False, url=f"ws://127.0.0.1:{shard1_port}/forward_to_me/BUS4")
    wait_for(lambda: _ready(shard1_port, "BUS4"), 15, "the agent to attach to shard 1")
    payload = os.urandom(1 << 20)
    assert sha256(transfer(d.services["BUS4"], payload)) == sha256(payload)
    assert "shard 1 of 2" in shard1.log() and "[shard 1]" in shard1.log()

    # The merged status alone (--shards-status): shard 0 does not answer, its service is shown down.
    status = start(d, "--shards-status", name="status")
    wait_for(lambda: status.check_alive() or accepts_connections(d.http_port), 15, f"merged status: {status.log()}")
    merged = d.status()
    assert list(merged) == list(OWNERS)
    assert merged["BUS4"]["connected"] is True and merged["BUS4"]["shard"] == 1
    assert merged["BUS1"]["shard_down"] is True and merged["BUS1"]["connected"] is False
    shard0 = d.shard_ports[0]  # type: ignore[attr-defined]
    assert merged["BUS1"]["last_disconnect_reason"].startswith(f"shard 0 (127.0.0.1:{shard0}) not answering")
    request = urllib.request.Request(f"{d.base_url}/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    assert "1</b> of <b>3</b> services online" in page and "not answering" in page
    with urllib.request.urlopen(f"{d.base_url}/shards", timeout=10) as response:
        summary = json.loads(response.read())
    assert [(s["shard"], s["up"], s["services"]) for s in summary] == [(0, False, 0), (1, True, 2)]


def _ready(port: int, sid: str) -> bool:
    """/ready/<ID> of one shard answers 200 (an agent is attached)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready/{sid}", timeout=5):
            return True
    except OSError:
        return False


def test_shard_reload_takes_its_share(deployment: Deployment) -> None:
    """SIGHUP to one shard: a service pinned to it now starts listening there; one moved away stops."""
    d = deployment
    d.write_config()
    shard0 = start(d, "--shard", "0", "--log-format=json", name="shard0")
    wait_for(lambda: shard0.check_alive() or accepts_connections(d.shard_ports[0]), 15, shard0.log())  # type: ignore[attr-defined]
    assert listening(d.services["BUS1"]) and not listening(d.services["BUS4"])
    text = d.config_path.read_text()
    text = text.replace(f'local_listen_endpoint = "127.0.0.1:{d.services["BUS4"]}"',
                        f'local_listen_endpoint = "127.0.0.1:{d.services["BUS4"]}"\nshard = 0')
    text = text.replace(f'local_listen_endpoint = "127.0.0.1:{d.services["BUS1"]}"',
                        f'local_listen_endpoint = "127.0.0.1:{d.services["BUS1"]}"\nshard = 1')
    d.config_path.write_text(text)
    shard0.signal(signal.SIGHUP)
    shard0.wait_line(lambda m: m.startswith("reloaded") and "added BUS4" in m and "removed BUS1" in m)
    wait_for(lambda: listening(d.services["BUS4"]) and not listening(d.services["BUS1"]), 5,
             "BUS4 on shard 0, BUS1 gone")
    # A changed [shards] is refused at reload: the running shard keeps its config.
    d.config_path.write_text(text.replace("http_server_endpoints = [", 'http_server_endpoints = ["127.0.0.1:1", '))
    shard0.signal(signal.SIGHUP)
    shard0.wait_line(lambda m: m.startswith("reload failed") and "restart of every shard" in m)
    assert listening(d.services["BUS4"])


def run_cli(d: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(SERVER_NAME) + [str(d.config_path), *args], capture_output=True, text=True,
                          timeout=30)


def test_cli_errors_and_checks(deployment: Deployment) -> None:
    d = deployment
    d.write_config()
    checked = run_cli(d, "--check-config")
    assert checked.returncode == 0 and checked.stdout.strip().endswith("OK, 3 services, 2 shards (0: 1, 1: 2)")
    for args, words in [(["--shard", "2"], "--shard 2: not in 0..1"),
                        (["--shard", "0", "--all-shards"], "exclude each other")]:
        result = run_cli(d, *args)
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.splitlines()) == 1, result
    plain = d.tmp / "plain.toml"
    plain.write_text(f'http_server_endpoint = "127.0.0.1:{d.http_port}"\n')
    for flag in ("--all-shards", "--nginx-shard-map", "--shard=0"):
        result = subprocess.run(command(SERVER_NAME) + [str(plain), flag], capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "no [shards] table" in result.stderr, (flag, result.stderr)
    started = time.monotonic()
    assert not accepts_connections(d.http_port) and time.monotonic() - started < 5


def test_the_merged_status_of_a_large_fleet_comes_whole(deployment: Deployment) -> None:
    """400 services, no shard running: a document of more than 64 KiB, written head then body."""
    d = deployment
    d.services.update({f"FLEET{i:03d}": port for i, port in enumerate(free_ports(400))})  # none handed out before
    d.write_config()
    status = start(d, "--shards-status", name="status")
    wait_for(lambda: status.check_alive() or accepts_connections(d.http_port), 15, f"merged status: {status.log()}")
    with urllib.request.urlopen(f"{d.base_url}/", timeout=30) as response:
        body = response.read()
        assert len(body) == int(response.headers["Content-Length"]) > 64 * 1024
    merged = json.loads(body)
    assert len(merged) == len(OWNERS) + 400 and all(entry["shard_down"] for entry in merged.values())
