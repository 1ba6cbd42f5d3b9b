"""What operators see: the JSON and HTML status, Prometheus metrics, probes and JSON logs — against real traffic."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from reverse_websockify.protocol import SUBPROTOCOL
from tests.support.clients import sha256, transfer
from tests.support.deployment import Deployment
from tests.support.metrics import Sample, samples
from tests.support.ports import free_port, free_ports
from tests.support.services import Service
from tests.support.waiting import wait_for


def _get(deployment: Deployment, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{deployment.http_port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _metrics(deployment: Deployment, query: str = "") -> dict[Sample, float]:
    status, text = _get(deployment, f"/metrics{query}")
    assert status == 200
    return samples(text)


def test_metrics_count_real_traffic(deployment: Deployment, echo: Service) -> None:
    deployment.services["DOWN"] = free_port()
    deployment.write_config()
    deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    deployment.start_agent("DOWN", free_port())  # its service refuses every dial
    sizes = [1_000_003, 65_536, 7]
    for size in sizes:
        payload = os.urandom(size)
        assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", deployment.services["DOWN"]), timeout=5) as user:
            with pytest.raises(ConnectionResetError):  # like a refused connection: a reset, not a clean EOF
                user.recv(10)
    wait_for(lambda: deployment.status()["BUS1"]["client_connection_count"] == 0, 5, "streams to end")
    m = _metrics(deployment)
    bus = (("service", "BUS1"),)
    assert m[("reverse_websockify_bytes_total", (("direction", "to_service"), ("service", "BUS1")))] == sum(sizes)
    assert m[("reverse_websockify_bytes_total", (("direction", "from_service"), ("service", "BUS1")))] == sum(sizes)
    assert m[("reverse_websockify_streams_opened_total", bus)] == 3
    assert m[("reverse_websockify_agent_online", bus)] == 1
    assert m[("reverse_websockify_agent_connects_total", bus)] == 1
    assert m[("reverse_websockify_active_streams", bus)] == 0
    assert m[("reverse_websockify_stream_open_seconds_count", bus)] == 3
    assert m[("reverse_websockify_stream_open_seconds_bucket", (("le", "+Inf"), ("service", "BUS1")))] == 3
    assert m[("reverse_websockify_streams_failed_total", (("reason", "dial_failed"), ("service", "DOWN")))] == 2
    assert m[("reverse_websockify_streams_failed_total", (("reason", "dial_failed"), ("service", "BUS1")))] == 0
    # The JSON status agrees with the metrics.
    status = deployment.status()
    assert status["BUS1"]["bytes_to_service"] == sum(sizes) == status["BUS1"]["bytes_from_service"]
    assert status["DOWN"]["streams_failed"] == {"dial_failed": 2}
    # Agent gone: the gauge drops, the disconnect is counted.
    deployment.agents[0].stop()
    wait_for(lambda: not deployment.status()["BUS1"]["connected"], 5, "disconnect")
    m = _metrics(deployment)
    assert m[("reverse_websockify_agent_online", bus)] == 0
    assert m[("reverse_websockify_agent_disconnects_total", bus)] == 1
    assert deployment.status()["BUS1"]["last_disconnect_reason"]


def test_a_fleet_is_filtered_paged_and_summed(deployment: Deployment, echo: Service) -> None:
    """121 services: the status pages page and filter, /metrics sums past metrics_per_service_limit."""
    taken = set(deployment.services.values())
    ports = [p for p in free_ports(120 + len(taken)) if p not in taken][:120]
    deployment.services.update({f"FLEET{i:03d}": port for i, port in enumerate(ports)})
    deployment.extra_config = "metrics_per_service_limit = 50"
    deployment.write_config()
    deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    payload = os.urandom(300_001)
    assert sha256(transfer(deployment.services["BUS1"], payload)) == sha256(payload)

    assert len(deployment.status()) == 121  # the original document: every service, ID -> entry
    code, body = _get(deployment, "/services?state=online")
    page = json.loads(body)
    assert code == 200 and list(page["services"]) == ["BUS1"] and page["matched"] == 1
    assert page["summary"]["services"] == 121 and page["summary"]["online"] == 1
    assert page["services"]["BUS1"]["bytes_to_service"] == len(payload)
    code, body = _get(deployment, "/services?limit=5&offset=1")  # paged: read from the services' brief entries
    paged = json.loads(body)
    assert code == 200 and paged["summary"] == page["summary"] and paged["matched"] == 121
    assert list(paged["services"]) == list(deployment.status())[1:6]
    assert paged["services"]["FLEET000"] == deployment.status()["FLEET000"]  # the whole entry for the rows
    code, body = _get(deployment, "/?q=fleet11&limit=5")
    assert code == 200 and list(json.loads(body)) == [f"FLEET11{i}" for i in range(5)]
    assert _get(deployment, "/?state=asleep") == (400, "state: expected one of online, reconnecting, offline, "
                                                       "got 'asleep'\n")
    request = urllib.request.Request(f"{deployment.base_url}/", headers={"Accept": "text/html"})
    with urllib.request.urlopen(request, timeout=5) as response:
        html_page = response.read().decode()
    assert html_page.count('<tr class="service"') == 100 and "1&ndash;100 of 121" in html_page

    fleet = _metrics(deployment)
    assert fleet[("reverse_websockify_services", ())] == 121
    assert fleet[("reverse_websockify_bytes_total", (("direction", "to_service"),))] == len(payload)
    assert fleet[("reverse_websockify_agent_online", ())] == 1
    assert not any(("service", "BUS1") in labels for _, labels in fleet)
    one = _metrics(deployment, "?service=BUS1")
    assert one[("reverse_websockify_bytes_total", (("direction", "from_service"), ("service", "BUS1")))] == len(payload)
    assert {dict(labels).get("service") for _, labels in one} <= {"BUS1", None}
    every = _metrics(deployment, "?per_service=1")
    assert every[("reverse_websockify_agent_online", (("service", "FLEET119"),))] == 0


def test_a_stalled_server_says_so_in_its_metrics_and_its_log(deployment: Deployment) -> None:
    """A server that gets no CPU for 0.6 s (SIGSTOP here; an overloaded host in life) held every tunnel as
    long: the event loop's lag shows it in /metrics, and a WARNING says it once."""
    lag = "reverse_websockify_event_loop_lag_seconds"
    server = deployment.start_server()
    wait_for(lambda: _metrics(deployment).get((f"{lag}_count", ()), 0) >= 20, 5, "the lag timer's samples")
    before = _metrics(deployment)
    server.signal(signal.SIGSTOP)
    time.sleep(0.6)
    server.signal(signal.SIGCONT)
    longest_before = before[("reverse_websockify_event_loop_lag_max_seconds", ())]
    if longest_before < 0.25:  # else a hold on a busy box already had this minute's one warning
        server.wait_log("the event loop was held for 0.")
    else:
        wait_for(lambda: _metrics(deployment)[("reverse_websockify_event_loop_lag_max_seconds", ())] >= 0.5, 5,
                 "the stop in the lag histogram")
    after = _metrics(deployment)
    held = (f"{lag}_bucket", (("le", "1.0"),)), (f"{lag}_bucket", (("le", "0.5"),))
    assert (after[held[0]] - after[held[1]]) - (before[held[0]] - before[held[1]]) == 1  # one sample met the stop
    assert 0.5 <= after[("reverse_websockify_event_loop_lag_max_seconds", ())] < 1.0
    assert server.log().count("the event loop was held") == 1 or longest_before >= 0.25


def test_health_and_readiness(deployment: Deployment, echo: Service) -> None:
    deployment.start_server()
    assert _get(deployment, "/healthz")[0] == 200
    assert _get(deployment, "/ready/BUS1")[0] == 503
    assert _get(deployment, "/ready/NOPE")[0] == 404
    agent = deployment.start_agent("BUS1", echo.port)
    assert _get(deployment, "/ready/BUS1")[0] == 200
    agent.stop()
    wait_for(lambda: _get(deployment, "/ready/BUS1")[0] == 503, 5, "readiness to drop")


def test_json_logs_carry_service_stream_and_peer(deployment: Deployment, echo: Service) -> None:
    server = deployment.start_server("--log-format=json")
    agent = deployment.start_agent("BUS1", echo.port, "--log-format=json")
    assert transfer(deployment.services["BUS1"], b"json logs") == b"json logs"
    server.wait_log("closed")
    agent.wait_log("closed")
    agent.stop()
    server.wait_log("disconnected after")
    for process, role in ((server, "server"), (agent, "agent")):
        lines = [json.loads(line) for line in process.log().splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        stream_events = [line for line in lines if line.get("stream") == 1]
        assert len(stream_events) >= 2, (role, lines)
        for event in stream_events:
            assert event["service"] == "BUS1" and event["peer"]
    server_lines = [json.loads(line) for line in server.log().splitlines()]
    gone = [line for line in server_lines if "disconnected after" in line["message"]]
    assert gone and gone[0]["duration_seconds"] >= 0 and gone[0]["reason"]
    agent_lines = [json.loads(line) for line in agent.log().splitlines()]
    assert all(line.get("service") == "BUS1" for line in agent_lines)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(url: str, profile: Path) -> str:
    assert CHROMIUM, "chromium is not installed (scripts/test.sh installs Debian's chromium)"
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_html_page_in_headless_chromium_escapes_everything(tmp_path: Path, echo: Service) -> None:
    evil_nickname = "<script>document.title='PWNED'</script><b>bold</b>"
    deployment = Deployment(tmp=tmp_path, services={"BUS1": free_port(), "EVIL": free_port()}, http_port=free_port())
    deployment.write_config()
    text = deployment.config_path.read_text().replace('nickname = "nick-EVIL"', f'nickname = "{evil_nickname}"')
    deployment.config_path.write_text(text)
    try:
        deployment.start_server()
        deployment.start_agent("BUS1", echo.port)
        assert transfer(deployment.services["BUS1"], b"x" * 2048) == b"x" * 2048

        async def evil_agent() -> None:  # an agent version from the network is hostile input too
            async with connect(deployment.url("EVIL"), subprotocols=[SUBPROTOCOL],
                               user_agent_header="<img src=x onerror=\"document.title='PWNED2'\">"):
                wait_for(lambda: deployment.status()["EVIL"]["connected"], 5, "evil agent")
                dom = await asyncio.to_thread(_dump_dom, f"http://127.0.0.1:{deployment.http_port}/",
                                              tmp_path / "chromium")
                results.append(dom)

        results: list[str] = []
        asyncio.run(evil_agent())
        dom = results[0]
    finally:
        deployment.stop()
    assert "<title>reverse_websockify: 2/2 online</title>" in dom
    assert "PWNED" not in dom.split("<title>")[1].split("</title>")[0]
    assert dom.count('class="service"') == 2
    assert "nick-BUS1" in dom and "online" in dom
    # Shown as text: the DOM holds the escaped markup, not a <script> or <img> element.
    assert "&lt;script&gt;document.title='PWNED'&lt;/script&gt;&lt;b&gt;bold&lt;/b&gt;" in dom
    assert "&lt;img src=x onerror=" in dom
    assert "<script>" not in dom and "<img" not in dom
    assert "2.0 KiB" in dom  # bytes to the service, human-readable
