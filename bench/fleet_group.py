"""Group fleet: one real server with N simulated agents attached (bench/fleet), and what they cost it.

One server with N + 1 services (config by bench.fleet.config: ports outside the ephemeral range),
one real agent process for the extra service ``web`` in front of the static-file nginx, and the
fleet generator (``python3 -m bench.fleet``, its own process) for the N others. Measured, in order:

1. ``wrk --latency`` through the real agent with only that agent attached (the baseline), and one
   GET of /metrics, / (JSON, HTML) and /healthz;
2. the fleet's attach: the time until all N are attached, agents/s, failures by reason; the server's
   RSS with none and with N attached (÷ N: per idle agent); its CPU, and the generator's, while idle;
3. the same wrk with the N attached: (a) quiet, (b) while /metrics is scraped every second, (c) while
   the status page is loaded every second (JSON and HTML), (d) across a SIGHUP (unchanged config):
   p99 as a ratio to the baseline's, each /metrics and / response timed, /healthz polled every 50 ms
   around the SIGHUP (its slowest answer), the reload's duration (SIGHUP to the "reloaded" log line);
   with every wrk run, how long the server's event loop was held meanwhile (its lag histogram in
   /metrics, read before and after: looplag.py);
4. a restart with the fleet attached, by SIGTERM and then by SIGKILL: how long the server took to
   exit, to answer /healthz again, and until all N (and the real agent) were attached again; the
   agents not back within the wait are "stuck", with their state and last failure.
"""

from __future__ import annotations

import json
import signal
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench.cpu import CpuMeter
from bench.errors import BenchError
from bench.fixtures import StaticFilesNginx
from bench.fleet.config import free_ports_in_range, service_ids, write_config
from bench.processes import register
from bench.progress import progress
from bench.tools import wrk
from tests.support import probes
from tests.support.deployment import Deployment
from tests.support.metrics import samples
from tests.support.processes import Process
from tests.support.programs import REPO
from tests.support.waiting import WaitTimeout, wait_for

if TYPE_CHECKING:
    from bench.scenarios import Bench

WEB = "web"  # the service of the one real agent
WRK_CONNECTIONS = 16
SCRAPE_EVERY = 1.0
HEALTHZ_EVERY = 0.05
REATTACH_TARGET = 30.0  # seconds (issue 14)
FDS_PER_AGENT_SERVER = 2  # its listener and its WebSocket
FDS_SPARE = 300  # wrk's connections, nginx's, logs...


def fleet_size(wanted: int, fd_soft_limit: int) -> int:
    """N that fits the descriptor limit every process inherits from the benchmark (the server's ~2 per agent)."""
    return max(0, min(wanted, (fd_soft_limit - FDS_SPARE) // FDS_PER_AGENT_SERVER))


# -- HTTP against the server ------------------------------------------------------------------------


def timed_get(url: str, accept: str = "*/*", timeout: float = 30.0) -> tuple[float, int, int]:
    """(seconds, body bytes, status) of one GET; status 0 when it failed."""
    started = time.monotonic()
    try:
        request = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            size = len(response.read())
            return time.monotonic() - started, size, response.status
    except OSError:
        return time.monotonic() - started, 0, 0


LAG = "reverse_websockify_event_loop_lag_seconds_bucket"


def loop_lag_buckets(base: str) -> dict[float, float]:
    """The server's event-loop lag histogram (cumulative count by upper bound, seconds) from /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
        text = response.read().decode()
    return {float(dict(labels)["le"]): value for (name, labels), value in samples(text).items() if name == LAG}


def lag_summary(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """Samples taken between two readings, how many were 5 ms or more late, and the bucket of the latest."""
    delta = {bound: after[bound] - before.get(bound, 0.0) for bound in sorted(after)}
    samples = delta.get(float("inf"), 0.0)
    under_5ms = max((n for bound, n in delta.items() if bound <= 0.005), default=0.0)
    reached = [bound for bound, n in delta.items() if n >= samples and samples]  # cumulative: all are in
    longest = min(reached) if reached else 0.0
    return {"samples": int(samples), "over_5ms": int(samples - under_5ms),
            "longest_ms_at_most": "∞" if longest == float("inf") else f"{longest * 1000:g}"}


class Repeating(threading.Thread):
    """GETs ``urls`` (with their Accept header) in turn, one round every ``every`` seconds, until stopped."""

    def __init__(self, urls: list[tuple[str, str]], every: float) -> None:
        super().__init__(daemon=True)
        self.urls, self.every = urls, every
        self.timings: dict[str, list[tuple[float, float, int, int]]] = {f"{u} {a}": [] for u, a in urls}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            for url, accept in self.urls:
                seconds, size, status = timed_get(url, accept)
                self.timings[f"{url} {accept}"].append((started, seconds, size, status))
            self.stopped.wait(max(0.0, self.every - (time.monotonic() - started)))

    def stop(self) -> None:
        self.stopped.set()
        self.join(60)


def timing_summary(samples: list[tuple[float, float, int, int]]) -> dict[str, Any]:
    times = [s[1] for s in samples]
    return {"count": len(samples), "median_s": statistics.median(times) if times else None,
            "max_s": max(times) if times else None, "bytes": samples[-1][2] if samples else 0,
            "failed": sum(1 for s in samples if s[3] != 200)}


# -- the fleet generator's process --------------------------------------------------------------------


class FleetGenerator:
    """``python3 -m bench.fleet`` in its own process; ``status()`` is its latest snapshot (a JSON file)."""

    def __init__(self, tmp: Path, agents: int, server: str, prefix: str, env: dict[str, str],
                 event_loop: str | None) -> None:
        self.status_file = tmp / "fleet-status.json"
        self.agents = agents
        args = [sys.executable, "-m", "bench.fleet", "--agents", str(agents), "--server", server, "--id-prefix", prefix,
                "--interval", "0.2", "--status-file", str(self.status_file)]
        if event_loop:
            args.append(f"--event-loop={event_loop}")
        self.process = register(Process(args, tmp / "fleet.log", name="fleet generator", env=env, cwd=REPO,
                                        launcher=False))

    def status(self) -> dict[str, Any]:
        self.process.check_alive()
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def attached(self) -> int:
        return int(self.status().get("attached", 0))

    def wait_attached(self, timeout: float) -> bool:
        try:
            wait_for(lambda: self.attached() >= self.agents, timeout, "the fleet to attach", 0.1)
            return True
        except WaitTimeout:
            return False

    def cpu_seconds(self) -> float:
        return probes.tree_cpu_seconds(self.process.pid)

    def stop(self) -> dict[str, Any]:
        """SIGTERM: it closes every WebSocket and writes its final snapshot."""
        self.process.stop(30)
        return self.status_final()

    def status_final(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}


# -- the group -----------------------------------------------------------------------------------------


class FleetRun:
    def __init__(self, bench: Bench, n: int) -> None:
        self.bench, self.s, self.n = bench, bench.s, n
        self.out: dict[str, Any] = {"agents": n}
        bench.results.fleet = self.out
        self.nginx: StaticFilesNginx | None = None
        self.deployment: Deployment | None = None
        self.generator: FleetGenerator | None = None
        self.agent: Process | None = None

    # the server and its one real agent
    @property
    def base(self) -> str:
        assert self.deployment is not None
        return self.deployment.base_url

    @property
    def server(self) -> Process:
        assert self.deployment is not None and self.deployment.server is not None
        return self.deployment.server

    def setup(self) -> None:
        self.bench.tmp.chmod(0o755)  # nginx's workers may run as nobody: they must reach fleet/nginx/www
        tmp = self.bench.tmp / "fleet"
        tmp.mkdir()
        self.nginx = StaticFilesNginx(tmp)
        http_port, web_port, *ports = free_ports_in_range(self.n + 2)  # outside the ephemeral range
        services = {WEB: web_port, **dict(zip(service_ids(self.n, "fleet"), ports))}
        programs = self.s.programs
        self.deployment = Deployment(tmp=tmp, services=services, http_port=http_port, programs=programs,
                                     env=programs.env(), extra_config=self.s.server_config,
                                     options=[f"--log-level={self.s.log_level}"] if self.s.log_level else [])
        write_config(self.deployment.config_path, f"127.0.0.1:{http_port}", services, extra=self.s.server_config)
        started = time.monotonic()
        self._start_server("fleet server")
        self.out["server_start_seconds"] = time.monotonic() - started
        self.agent = register(self.deployment.start_agent(WEB, self.nginx.port, wait=False, name="fleet agent web"))
        self.bench.logs.append(self.agent)
        self.wait_ready(30)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/small.bin", timeout=10) as response:
            if response.read() != self.nginx.small:
                raise BenchError("GET /small.bin through the real agent's tunnel did not return nginx's file")
        progress(f"  server with {self.n + 1} services up in {self.out['server_start_seconds']:.1f} s; real agent "
                 f"attached for {WEB} (nginx {self.nginx.port} via {web_port})")

    def _start_server(self, name: str) -> None:
        assert self.deployment is not None
        self.bench.logs.append(register(self.deployment.start_server(timeout=60 + self.n / 500, name=name)))

    def ready(self) -> bool:
        return timed_get(f"{self.base}/ready/{WEB}", timeout=10)[2] == 200

    def wait_ready(self, timeout: float) -> None:
        def up() -> bool:
            self.server.check_alive()
            assert self.agent is not None
            self.agent.check_alive()
            return self.ready()
        wait_for(up, timeout, f"the real agent for {WEB} to attach", 0.1)

    def wrk(self, label: str, during: Callable[[], Callable[[], None]] | None = None) -> dict[str, Any] | None:
        """wrk through the real agent; ``during`` starts something for the run's length and returns its stop."""
        assert self.deployment is not None
        port = self.deployment.services[WEB]
        lag_before = loop_lag_buckets(self.base)
        stop = during() if during is not None else None
        try:
            v = self.bench.measure(f"fleet: {label}", lambda: wrk(port, WRK_CONNECTIONS, self.s.fleet_seconds))
        finally:
            if stop is not None:
                stop()
        lag = lag_summary(lag_before, loop_lag_buckets(self.base))
        if v is not None:
            progress(f"  {label}: {v['rps']:.0f} req/s, p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms, "
                     f"{v['errors']} errors; event loop held ≥ 5 ms in {lag['over_5ms']} of {lag['samples']} "
                     f"samples, longest ≤ {lag['longest_ms_at_most']} ms")
            v["loop_lag"] = lag
        self.out.setdefault("wrk", {})[label] = v
        return v

    def single_gets(self) -> dict[str, Any]:
        got = {}
        for name, path, accept in (("metrics", "/metrics", "*/*"), ("status_json", "/", "application/json"),
                                   ("status_html", "/", "text/html"), ("healthz", "/healthz", "*/*")):
            seconds, size, status = timed_get(self.base + path, accept)
            got[name] = {"seconds": seconds, "bytes": size, "status": status}
        return got

    def cpu(self, seconds: float) -> dict[str, float]:
        """CPU of the server and the generator over ``seconds`` with nothing else going on, in cores."""
        assert self.generator is not None
        meter = CpuMeter({"server": [self.server.pid], "generator": [self.generator.process.pid]})
        time.sleep(seconds)  # the measurement window itself
        return meter.cores()

    def attach(self) -> None:
        assert self.deployment is not None
        time.sleep(1.0)  # part of the figure: the "no fleet" RSS of a server that settled
        self.out["server_rss_before_kib"] = self.server.tree_kib()
        progress(f"  starting {self.n} simulated agents")
        server_cpu = probes.tree_cpu_seconds(self.server.pid)
        self.generator = FleetGenerator(self.deployment.tmp, self.n, f"127.0.0.1:{self.deployment.http_port}",
                                        "fleet", self.s.programs.env(), self.s.event_loop)
        limit = 60 + self.n / 50
        if not self.generator.wait_attached(limit):
            st = self.generator.status()
            self.bench.results.fail(f"fleet: only {st.get('attached')} of {self.n} agents attached within "
                                    f"{limit:.0f} s; failures {st.get('failures')}")
        st = self.generator.status()
        self.out["attach"] = {k: st.get(k) for k in ("all_attached_seconds", "attach_rate_per_second", "attempts",
                                                     "failures", "attached")}
        # who was busy during the attach: CPU seconds of each (the generator's since it started)
        self.out["attach"]["cpu_seconds"] = {"server": probes.tree_cpu_seconds(self.server.pid) - server_cpu,
                                             "generator": self.generator.cpu_seconds()}
        progress(f"  all {st.get('attached')} attached after {st.get('all_attached_seconds')} s "
                 f"({st.get('attach_rate_per_second')} agents/s); failures {st.get('failures')}")
        time.sleep(3.0)  # part of the figure: RSS of idle agents, not of handshakes finishing
        after = self.server.tree_kib()
        self.out["server_rss_after_kib"] = after
        self.out["server_rss_per_agent_kib"] = (after - self.out["server_rss_before_kib"]) / self.n
        self.out["server_fds"] = self.server.tree_fd_count()
        self.out["generator_rss_kib"] = self.generator.process.tree_kib()
        self.out["idle_cpu_seconds"] = self.s.fleet_idle_seconds
        self.out["idle_cores"] = self.cpu(self.s.fleet_idle_seconds)
        progress(f"  server RSS {self.out['server_rss_before_kib'] / 1024:.1f} → {after / 1024:.1f} MiB "
                 f"({self.out['server_rss_per_agent_kib']:.1f} KiB per agent); idle CPU server "
                 f"{self.out['idle_cores']['server'] * 100:.1f} %, generator {self.out['idle_cores']['generator'] * 100:.1f} %")

    def loaded(self) -> None:
        base = self.base
        self.wrk("with the fleet, quiet")

        def scraping(urls: list[tuple[str, str]], key: str) -> Callable[[], Callable[[], None]]:
            def start() -> Callable[[], None]:
                poller = Repeating(urls, SCRAPE_EVERY)
                poller.start()

                def stop() -> None:
                    poller.stop()
                    self.out.setdefault("http_timings", {})[key] = {
                        name.rsplit(" ", 1)[1] if key == "status" else key: timing_summary(samples)
                        for name, samples in poller.timings.items()}
                return stop
            return start

        self.wrk("with the fleet, /metrics every second", scraping([(f"{base}/metrics", "*/*")], "metrics"))
        self.wrk("with the fleet, status page every second",
                 scraping([(f"{base}/", "application/json"), (f"{base}/", "text/html")], "status"))
        self.wrk("with the fleet, across a SIGHUP", self.sighup)
        for key, t in self.out.get("http_timings", {}).items():
            progress(f"  {key}: {t}")

    def sighup(self) -> Callable[[], None]:
        """A SIGHUP a third into the wrk run, /healthz polled every 50 ms meanwhile; the reload's duration."""
        health = Repeating([(f"{self.base}/healthz", "*/*")], HEALTHZ_EVERY)
        log_path = self.server.log_path
        offset = log_path.stat().st_size
        health.start()
        sent: list[float] = []

        def hup() -> None:
            time.sleep(self.s.fleet_seconds / 3)  # part of the scenario: wrk is under way before the reload
            sent.append(time.monotonic())
            self.server.signal(signal.SIGHUP)

        thread = threading.Thread(target=hup, daemon=True)
        thread.start()

        def stop() -> None:
            thread.join(60)
            health.stop()
            samples = next(iter(health.timings.values()))
            at = sent[0] if sent else 0.0
            around = [s for s in samples if s[0] + s[1] >= at - 1]
            reloaded = None
            try:
                with open(log_path, "rb") as f:
                    f.seek(offset)
                    text = f.read().decode(errors="replace")
                if "reloaded " in text:
                    reloaded = True
            except OSError:
                pass
            self.out["sighup"] = {
                "healthz_polls": len(around),
                "healthz_slowest_s": max((s[1] for s in around), default=None),
                "healthz_failed": sum(1 for s in around if s[3] != 200),
                "reload_logged": reloaded,
            }
        return stop

    def reload_seconds(self) -> None:
        """SIGHUP alone (nothing else running): until its "reloaded" line is in the log, and /healthz meanwhile."""
        log_path = self.server.log_path
        offset = log_path.stat().st_size
        started = time.monotonic()
        self.server.signal(signal.SIGHUP)
        slowest = 0.0
        done = None
        while time.monotonic() - started < 60:
            slowest = max(slowest, timed_get(f"{self.base}/healthz", timeout=30)[0])
            with open(log_path, "rb") as f:
                f.seek(offset)
                if b"reloaded " in f.read():
                    done = time.monotonic() - started
                    break
            time.sleep(HEALTHZ_EVERY)
        self.out.setdefault("sighup", {})["reload_seconds"] = done
        self.out["sighup"]["healthz_slowest_alone_s"] = slowest
        progress(f"  SIGHUP alone: reloaded after {done} s; slowest /healthz meanwhile {slowest:.3f} s")

    def restart(self, sig: signal.Signals) -> None:
        """Stop the server with ``sig``, start it again: until /healthz, the real agent, all N attached again."""
        assert self.deployment is not None and self.generator is not None
        name = sig.name
        if not self.generator.wait_attached(self.s.fleet_reattach_wait):  # the previous restart's stragglers
            self.bench.results.notes.append(f"fleet: the restart by {name} began with only "
                                            f"{self.generator.attached()} of {self.n} agents attached")
        progress(f"  restart by {name} with {self.generator.attached()} agents attached")
        before = self.generator.status()
        server = self.server
        killed = time.monotonic()
        server.signal(sig)
        try:
            server.proc.wait(60)
            exited = time.monotonic() - killed
        except Exception:  # noqa: BLE001 — a server that does not exit is killed, and that is the figure
            server.kill()
            exited = None
        code = server.proc.returncode
        server.stop()
        self._start_server(f"fleet server (after {name})")
        listening = time.monotonic() - killed
        wait = max(REATTACH_TARGET * 2, self.s.fleet_reattach_wait)  # past the target: the real time, if it comes
        all_back = None
        web_back = None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if web_back is None and self.ready():
                web_back = time.monotonic() - killed
            st = self.generator.status()
            # Attached again, each of them: the count alone may still be the one from before the signal.
            reattached = int(st.get("attaches") or 0) - int(before.get("attaches") or 0)
            if all_back is None and st.get("attached") == self.n and reattached >= self.n:
                all_back = time.monotonic() - killed
            if all_back is not None and web_back is not None:
                break
            time.sleep(0.1)
        st = self.generator.status()
        outage = st.get("outages", [])[len(before.get("outages", [])):]
        result = {
            "exit_seconds": exited, "exit_code": code, "healthz_again_s": listening,
            "all_attached_again_s": all_back, "real_agent_again_s": web_back,
            "all_attached_after_healthz_s": None if all_back is None else all_back - listening,
            "attached_at_end": st.get("attached"), "stuck": self.n - int(st.get("attached") or 0),
            "stuck_examples": st.get("not_attached"), "waited_s": wait,
            "fleet_outage": outage[0] if outage else None,
            "failures_during": {k: v - before.get("failures", {}).get(k, 0) for k, v in st.get("failures", {}).items()
                                if v != before.get("failures", {}).get(k, 0)},
        }
        self.out.setdefault("restarts", {})[name] = result
        if all_back is None:
            self.bench.results.fail(f"fleet: after a restart by {name}, only {st.get('attached')} of {self.n} "
                                    f"agents were attached again within {wait:.0f} s")
        progress(f"  {name}: server exited after {exited} s (code {code}), /healthz again after {listening:.1f} s, "
                 f"all {self.n} attached again after {all_back} s, the real agent after {web_back} s (from the signal)")
        self.wait_ready(60)

    def stop(self) -> None:
        if self.generator is not None:
            final = self.generator.stop()
            self.out["generator_final"] = {k: final.get(k) for k in ("attempts", "attaches", "failures", "disconnects",
                                                                     "protocol_errors", "outages", "streams_opened")}
        if self.deployment is not None:
            self.deployment.stop()
        if self.nginx is not None:
            self.nginx.stop()


def fleet(bench: Bench) -> None:
    s = bench.s
    if "fleet" not in s.only:
        return
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = fleet_size(s.fleet_agents, soft)
    if n < s.fleet_agents:
        bench.results.notes.append(f"fleet: {n} agents instead of {s.fleet_agents}: the file-descriptor limit is "
                                   f"{soft} and the server needs ~{FDS_PER_AGENT_SERVER} per agent")
    if n <= 0:
        return
    progress(f"fleet: {n} simulated agents (bench/fleet) and one real agent on one server")
    run = FleetRun(bench, n)
    try:
        run.setup()
        run.out["baseline_http"] = run.single_gets()
        run.wrk("baseline: only the real agent")
        run.attach()
        run.out["fleet_http"] = run.single_gets()
        progress("  single GETs with the fleet: " + ", ".join(
            f"{k} {v['seconds'] * 1000:.0f} ms ({v['bytes']} B)" for k, v in run.out["fleet_http"].items()))
        run.loaded()
        run.reload_seconds()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            run.restart(sig)
    except BenchError as exc:
        bench.results.fail(f"fleet: {exc}")
    finally:
        run.stop()
