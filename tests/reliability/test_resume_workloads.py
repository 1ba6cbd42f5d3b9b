"""Real workloads through the tunnel while the agent's link is cut: protocol v2 sessions resume them.

The agent reaches the server through tests/reliability/faultproxy.py; keepalive runs at 1 s/1 s on
both sides (see tests/integration/test_sessions.py). The workload is a real ``redis-server``
driven by ``redis-benchmark``, which treats any lost or garbled reply as an error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.reliability.conftest import Figure
from tests.reliability.faultproxy import FaultProxy
from tests.support.deployment import Deployment
from tests.support.ports import accepts_connections, free_port
from tests.support.processes import Process
from tests.support.waiting import wait_for

FAST_KEEPALIVE_CONFIG = "ping_interval_seconds = 1\nping_timeout_seconds = 1"
FAST_KEEPALIVE_FLAGS = ("--ping-interval=1", "--ping-timeout=1")
CUTS = 3
CUT_SPACING = 1.0  # seconds between cuts
FIRST_CUT = 0.5  # seconds after redis-benchmark starts: the whole run takes only a few seconds
BENCHMARK_TIMEOUT = 120  # seconds; the run takes a few seconds even with the cuts
RATE = re.compile(r"^\s*(SET|GET):.*?([0-9][0-9.]*) requests per second", re.MULTILINE)


def _benchmark_args(port: int) -> list[str]:
    return ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "8", "-n", "200000", "-P", "16",
            "-t", "set,get", "-q"]


def _run_benchmark(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_benchmark_args(port), capture_output=True, text=True, timeout=BENCHMARK_TIMEOUT,
                          stdin=subprocess.DEVNULL)


def _rates(result: subprocess.CompletedProcess[str]) -> dict[str, float]:
    """Check a run: exit 0, no error, a SET and a GET line with a rate; return the rates."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"redis-benchmark exited {result.returncode}:\n{output[-3000:]}"
    assert "error" not in output.lower(), output[-3000:]
    # -q prints progress with carriage returns; the final line of each test follows the last one
    rates = {name: float(value) for name, value in RATE.findall(output.replace("\r", "\n"))}
    assert set(rates) == {"SET", "GET"}, output[-3000:]
    assert all(rate > 0 for rate in rates.values()), rates
    return rates


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Process]:
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        pytest.skip("redis-server and redis-benchmark are not installed (apt-get install redis-server redis-tools)")
    port = free_port()
    workdir = tmp_path / "redis"
    workdir.mkdir()
    process = Process(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                       "--appendonly", "no", "--daemonize", "no"],
                      tmp_path / "redis-server.log", cwd=workdir, launcher=False)
    try:
        wait_for(lambda: process.check_alive() or accepts_connections(port), 10, "redis-server to listen")
        process.port = port  # type: ignore[attr-defined]
        yield process
    finally:
        process.stop()


def test_redis_benchmark_through_cut_link_has_no_errors(
        deployment: Deployment, redis: Process, make_proxy: Callable[[int], FaultProxy], figure: Figure) -> None:
    redis_port: int = redis.port  # type: ignore[attr-defined]
    direct = _rates(_run_benchmark(redis_port))

    deployment.extra_config += FAST_KEEPALIVE_CONFIG
    deployment.write_config()
    deployment.options.append("--log-format=json")
    deployment.start_server()
    proxy = make_proxy(deployment.http_port)
    deployment.start_agent("BUS1", redis_port, *FAST_KEEPALIVE_FLAGS, url=f"{proxy.url_base}/forward_to_me/BUS1")
    user_port = deployment.services["BUS1"]

    results: list[subprocess.CompletedProcess[str]] = []
    failures: list[BaseException] = []

    def bench() -> None:
        try:
            results.append(_run_benchmark(user_port))
        except BaseException as exc:  # noqa: BLE001 — reported by the test's thread
            failures.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=bench, name="redis-benchmark", daemon=True)
    thread.start()
    cut_counts = []
    cut_during_run = 0
    for cut in range(CUTS):
        time.sleep(FIRST_CUT if cut == 0 else CUT_SPACING)
        # The agent's first retry comes 1.0 s after a lost link, as long as the spacing: a cut must find
        # the link it is meant to cut (a CI run cut 4 ms before the agent was back, and found nothing).
        wait_for(lambda: proxy.connection_count() > 0, 10, "the agent to be back through the proxy before a cut")
        running = thread.is_alive()
        count = proxy.cut(rst=True)
        cut_counts.append(count)
        if running and thread.is_alive() and count > 0:
            cut_during_run += 1
    thread.join(BENCHMARK_TIMEOUT + 10)
    took = time.monotonic() - started
    assert not thread.is_alive(), "redis-benchmark did not finish"
    assert not failures, failures
    tunnelled = _rates(results[0])

    assert all(count > 0 for count in cut_counts), f"a cut found no connection to cut: {cut_counts}"
    assert cut_during_run >= 1, f"no cut happened while redis-benchmark was running (cuts {cut_counts}, {took:.1f} s)"
    wait_for(lambda: deployment.status()["BUS1"]["connected"], 15, "the agent to be attached again")
    resumed = deployment.status()["BUS1"]["sessions_resumed"]
    assert resumed >= 1, resumed

    ratio = {name: tunnelled[name] / direct[name] for name in ("SET", "GET")}
    figure(f"v2: redis-benchmark (8 clients, -P 16, 200,000 SET + 200,000 GET) while the link is cut "
           f"{CUTS} times (RST), {FIRST_CUT} s after the start then {CUT_SPACING:.0f} s apart",
           "every request answered, no error: the session resumes and the streams carry on",
           f"redis-benchmark exit 0, no errors, {cut_during_run} of {CUTS} cuts while it ran, "
           f"{resumed} sessions resumed, {took:.1f} s in all; SET {tunnelled['SET']:,.0f} req/s "
           f"({ratio['SET']:.0%} of direct {direct['SET']:,.0f}), GET {tunnelled['GET']:,.0f} req/s "
           f"({ratio['GET']:.0%} of direct {direct['GET']:,.0f})",
           direct=direct, tunnelled=tunnelled, ratio=ratio, cuts=cut_counts, cuts_during_run=cut_during_run,
           sessions_resumed=resumed, took=took)
