"""Group shards (issue 14): the aggregate throughput of K busy tunnels on one server process and on 2 shards.

Two deployments run side by side for the whole group, each with the same K "bulk" tunnels (one real
agent each, in front of its own iperf3 server) and K "web" tunnels (one real agent each, in front of
the static-file nginx):

- **1 process**: an ordinary server (no ``[shards]``);
- **2 shards**: a config with ``[shards] http_server_endpoints = [A, B]`` run as an ordinary user runs
  it (``reverse_websockify_server config.toml``, i.e. ``--all-shards``: a supervisor with one child
  per shard and the merged status on ``http_server_endpoint``); tunnel i is pinned with
  ``shard = i % 2`` (half on each), and its agent dials ``ws://<its shard's endpoint>/forward_to_me/<ID>``.

Per repetition and per test (iperf3 each way, wrk) all K tunnels of one deployment are loaded **at
once** (K iperf3 clients, or K wrk, started together), then the same on the other deployment; the
order alternates between repetitions. The figure is the sum over the K tunnels; next to it the CPU
time of the server process(es) over that run (for 2 shards the supervisor and both shards, each also
on its own), of the K agents, and of the whole box (/proc/stat), in cores.
"""

from __future__ import annotations

import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from bench.errors import BenchError
from bench.fixtures import StaticFilesNginx
from bench.processes import register
from bench.progress import progress
from bench.tools import iperf3, wrk
from tests.support import probes
from tests.support.deployment import Deployment
from tests.support.ports import free_ports
from tests.support.processes import Process
from tests.support.waiting import wait_for

if TYPE_CHECKING:
    from bench.scenarios import Bench
    from bench.settings import Settings

WRK_CONNECTIONS = 16  # per tunnel
SHARDS = 2
ONE, TWO = "1 process", "2 shards"


class Tunnels(Deployment):
    """One server (a single process, or ``shards`` shards under the supervisor) with its services and agents.

    ``targets``: service ID -> port of the TCP service its agent dials (what Bench.measure watches).
    """

    def __init__(self, settings: Settings, tmp: Path, name: str, targets: dict[str, int], shards: int) -> None:
        directory = tmp / name
        directory.mkdir()
        ports = free_ports(1 + len(targets) + (shards if shards > 1 else 0))
        http, service_ports, self.shard_ports = ports[0], ports[1:1 + len(targets)], ports[1 + len(targets):]
        programs = settings.programs
        extra = settings.server_config
        service_config: dict[str, str] = {}
        self.owner: dict[str, int] = {}
        if shards > 1:
            endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in self.shard_ports)
            extra += f"\n[shards]\nhttp_server_endpoints = [{endpoints}]\n"
            self.owner = {sid: i % shards for i, sid in enumerate(targets)}
            service_config = {sid: f"shard = {k}" for sid, k in self.owner.items()}
        super().__init__(tmp=directory, services=dict(zip(targets, service_ports)), http_port=http,
                         programs=programs, env=programs.env(), extra_config=extra, service_config=service_config,
                         options=[f"--log-level={settings.log_level}"] if settings.log_level else [])
        self.name, self.targets, self.shards = name, targets, shards
        self.agent_of: dict[str, Process] = {}
        register(self.start_server(timeout=60, name=f"{name} server"))
        if shards > 1:
            wait_for(lambda: len(self.shard_pids()) == shards and all(self._shard_up(p) for p in self.shard_ports),
                     60, f"{name}: every shard to answer: {self.server_process.log()[-2000:]}", 0.2)
        self.first_shard_pids = self.shard_pids()

    @property
    def server_process(self) -> Process:
        assert self.server is not None
        return self.server

    @staticmethod
    def _shard_up(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def agent_url(self, sid: str) -> str:
        port = self.shard_ports[self.owner[sid]] if self.shards > 1 else self.http_port
        return f"ws://127.0.0.1:{port}/forward_to_me/{sid}"

    def start_agents(self) -> list[Process]:
        for sid, port in self.targets.items():
            self.agent_of[sid] = register(self.start_agent(sid, port, url=self.agent_url(sid), wait=False,
                                                           name=f"{self.name} agent {sid}"))
        return list(self.agent_of.values())

    def shard_pids(self) -> dict[int, int]:
        """Shard K -> the topmost process under the supervisor running ``--shard K`` (a one-file
        executable is a launcher with the program as its child: the launcher, whose tree holds both)."""
        found: dict[int, int] = {}
        if self.shards <= 1:
            return found
        for k in range(self.shards):
            pids = probes.tree_pids_running(self.server_process.pid, "--shard", str(k))
            if pids:
                found[k] = pids[0]  # tree_pids lists parents before their children
        return found

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the server's tree (supervisor and shards), each shard's, the agents'."""
        out = {"server": probes.tree_cpu_seconds(self.server_process.pid),
               "agents": sum(probes.tree_cpu_seconds(a.pid) for a in self.agent_of.values())}
        for k, pid in self.shard_pids().items():
            out[f"shard {k}"] = probes.tree_cpu_seconds(pid)
        return out


def box_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every core: all of /proc/stat's cpu line but idle, iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / probes.CLK_TCK


def all_at_once(jobs: list[Callable[[], Any]], what: str) -> list[Any]:
    """Run ``jobs`` in threads started together; their results, or a BenchError naming every one that failed."""
    results: list[Any] = [None] * len(jobs)
    errors: list[str] = []

    def run(i: int) -> None:
        try:
            results[i] = jobs[i]()
        except BenchError as exc:
            errors.append(f"tunnel {i}: {exc}")
        except Exception as exc:  # noqa: BLE001 — reported as the measurement's failure
            errors.append(f"tunnel {i}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"{what}: " + "; ".join(errors))
    return results


class ShardsRun:
    def __init__(self, bench: Bench, k: int) -> None:
        self.bench, self.s, self.k = bench, bench.s, k
        self.out: dict[str, Any] = {"tunnels": k, "shards": SHARDS, "rows": {}, "cpu_split": {}}
        bench.results.shards = self.out
        self.nginx: StaticFilesNginx | None = None
        self.deployments: dict[str, Tunnels] = {}
        self.iperf_ports: list[int] = []

    def setup(self) -> None:
        self.bench.tmp.chmod(0o755)  # nginx's workers may run as nobody: they must reach shards/nginx/www
        tmp = self.bench.tmp / "shards"
        tmp.mkdir()
        self.nginx = StaticFilesNginx(tmp)
        self.iperf_ports = free_ports(self.k)
        for what, shards, tag in ((ONE, 1, "one"), (TWO, SHARDS, "two")):
            targets = {**{f"{tag}-bulk{i}": self.iperf_ports[i] for i in range(self.k)},
                       **{f"{tag}-web{i}": self.nginx.port for i in range(self.k)}}
            started = time.monotonic()
            d = Tunnels(self.s, tmp, f"shards-{tag}", targets, shards)
            self.deployments[what] = d
            self.bench.logs.append(d.server_process)
            self.bench.logs += d.start_agents()
            d.wait_attached(list(targets), 60)
            for sid in targets:  # smoke: every web tunnel carries nginx's small file unchanged
                if "-web" in sid:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{d.services[sid]}/small.bin", timeout=10) as r:
                            body = r.read()
                    except OSError as exc:
                        raise BenchError(f"{what}: GET /small.bin through {sid} failed: {exc}") from None
                    if body != self.nginx.small:
                        raise BenchError(f"{what}: GET /small.bin through {sid} did not return nginx's file")
            self.out.setdefault("setup_seconds", {})[what] = round(time.monotonic() - started, 1)
            progress(f"  {what}: server up and {len(targets)} agents attached in {time.monotonic() - started:.1f} s"
                     + (f" (shards: {', '.join(f'{k} pid {p}' for k, p in d.shard_pids().items())})" if shards > 1 else ""))

    def bulk(self, d: Tunnels, reverse: bool) -> float:
        ports = [d.services[sid] for sid in d.targets if "-bulk" in sid]
        tmp = d.tmp / f"iperf3-{time.monotonic_ns()}"
        jobs = []
        for i, (direct, port) in enumerate(zip(self.iperf_ports, ports)):
            (tmp / str(i)).mkdir(parents=True)
            jobs.append(lambda direct=direct, port=port, i=i: iperf3(direct, port, self.s.bulk_seconds, reverse, 1,
                                                                   tmp / str(i)))
        return sum(all_at_once(jobs, f"{self.k} iperf3 at once"))

    def web(self, d: Tunnels) -> dict[str, float]:
        ports = [d.services[sid] for sid in d.targets if "-web" in sid]
        got = all_at_once([lambda port=port: wrk(port, WRK_CONNECTIONS, self.s.wrk_seconds) for port in ports],
                          f"{self.k} wrk at once")
        return {"rps": sum(v["rps"] for v in got), "p99_ms": max(v["p99_ms"] for v in got),
                "errors": sum(v["errors"] for v in got)}

    def row(self, key: str, label: str, unit: str, digits: int = 2, ratio: bool = True) -> dict[str, Any]:
        rows = self.out["rows"]
        if key not in rows:
            rows[key] = {"label": label, "unit": unit, "digits": digits, "ratio": ratio, ONE: [], TWO: []}
        return rows[key]

    def once(self, what: str, test: str, fn: Callable[[Tunnels], Any]) -> Any:
        """One test on one deployment, with the CPU of everything over its run."""
        d = self.deployments[what]
        cpu, box = d.cpu(), box_busy_seconds()
        started = time.monotonic()
        v = self.bench.measure(f"shards: {test}, {what}", lambda: fn(d), d)
        wall = time.monotonic() - started
        cores = {name: (after - cpu.get(name, after)) / wall for name, after in d.cpu().items()}
        cores["box"] = (box_busy_seconds() - box) / wall
        d.check_alive()
        if d.shards > 1 and d.shard_pids() != d.first_shard_pids:
            self.bench.results.fail(f"shards: {test}: a shard was restarted by the supervisor (pids "
                                    f"{d.first_shard_pids} at the start, {d.shard_pids()} now)")
            d.first_shard_pids = d.shard_pids()
        return v, cores

    def repetition(self, rep: int) -> None:
        order = [ONE, TWO] if rep % 2 else [TWO, ONE]
        k = self.k
        tests: list[tuple[str, str, str, Callable[[Tunnels], Any]]] = [
            ("iperf3_up", f"iperf3, {k} tunnels at once (1 stream each), user → service: total", "Gbit/s",
             lambda d: self.bulk(d, False)),
            ("iperf3_down", f"iperf3, {k} tunnels at once (1 stream each), service → user (-R): total", "Gbit/s",
             lambda d: self.bulk(d, True)),
            ("wrk", f"wrk -c{WRK_CONNECTIONS}, {k} tunnels at once: total requests", "req/s", self.web),
        ]
        for key, label, unit, fn in tests:
            main = self.row(key, label, unit, digits=0 if unit == "req/s" else 2)
            cpu = self.row(f"{key}_server_cpu", f"{label.split(':')[0]}: server CPU (2 shards: supervisor + shards)",
                           "cores", ratio=True)
            agents = self.row(f"{key}_agents_cpu", f"{label.split(':')[0]}: the {k} agents' CPU", "cores", ratio=False)
            box = self.row(f"{key}_box_cpu", f"{label.split(':')[0]}: whole box busy (of {len(os.sched_getaffinity(0))} cores)",
                           "cores", ratio=False)
            if key == "wrk":
                p99 = self.row("wrk_p99", f"wrk -c{WRK_CONNECTIONS}, {k} tunnels at once: worst tunnel's p99", "ms")
                errors = self.row("wrk_errors", f"wrk -c{WRK_CONNECTIONS}, {k} tunnels at once: socket errors + "
                                  "non-2xx", "count", digits=0, ratio=False)
            for what in order:
                v, cores = self.once(what, label.split(":")[0], fn)
                figure = v["rps"] if isinstance(v, dict) else v
                main[what].append(figure)
                cpu[what].append(cores["server"])
                agents[what].append(cores["agents"])
                box[what].append(cores["box"])
                if key == "wrk":
                    p99[what].append(None if v is None else v["p99_ms"])
                    errors[what].append(None if v is None else v["errors"])
                if what == TWO:
                    self.out["cpu_split"].setdefault(key, []).append(
                        {name: c for name, c in cores.items() if name.startswith("shard")} | {
                            "supervisor": max(0.0, cores["server"] - sum(c for n, c in cores.items()
                                                                           if n.startswith("shard")))})
                if figure is not None and figure <= 0:
                    self.bench.results.fail(f"shards: {label}, {what}: zero")
                split = "".join(f", {n} {c:.2f}" for n, c in cores.items() if n.startswith("shard"))
                shown = "failed" if figure is None else f"{figure:,.2f} {unit}"
                progress(f"  {label.split(':')[0]}, {what}: {shown}; CPU (cores): server {cores['server']:.2f}"
                         f"{split}, agents {cores['agents']:.2f}, box {cores['box']:.2f}")

    def stop(self) -> None:
        for d in self.deployments.values():
            d.stop()
        if self.nginx is not None:
            self.nginx.stop()


def shards(bench: Bench) -> None:
    s = bench.s
    if "shards" not in s.only:
        return
    k = s.shard_tunnels
    progress(f"shards: {k} busy tunnels at once, on 1 server process and on {SHARDS} shards (--all-shards)")
    if k % SHARDS:
        bench.results.notes.append(f"shards: {k} tunnels do not split evenly over {SHARDS} shards")
    run = ShardsRun(bench, k)
    try:
        run.setup()
        for rep in range(1, s.repeat + 1):
            progress(f"shards: repetition {rep}/{s.repeat}")
            run.repetition(rep)
        run.out["peak_rss_kib"] = {what: d.server_process.tree_kib("VmHWM") for what, d in run.deployments.items()}
    except BenchError as exc:
        bench.results.fail(f"shards: {exc}")
    finally:
        run.stop()
