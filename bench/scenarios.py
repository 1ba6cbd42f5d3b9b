"""What is measured: throughput (bulk and the same through wss, requests, connections, stall), idle streams,
idle agents. The far link and the real workloads are bench/far.py and bench/workloads.py.

Every figure through the tunnel is measured right after the same figure directly against the
service, within the same repetition (see bench/README.md, "The figures").
"""

from __future__ import annotations

import selectors
import socket
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from bench.cpu import CpuMeter
from bench.errors import BenchError, Fatal
from bench.fixtures import SMALL_SIZE, Rendezvous, StalledDownload, StaticFilesNginx, WssFront
from bench.logscan import log_problems
from bench.processes import start_process
from bench.progress import progress
from bench.results import Results, mib
from bench.settings import Settings
from bench.tools import UnparsableOutput, ab, iperf3, parse_pyspy_raw, wrk
from tests.support.ports import free_ports
from tests.support.processes import Process
from tests.support.services import Service
from tests.support.waiting import WaitTimeout, wait_for


WSS = "iperf3-wss"  # the service whose agent dials through the wss front (group wss)


class Bench:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.s = settings
        self.tmp = tmp
        self.results = Results(settings)
        self.logs: list[Process] = []
        self.identities: dict[str, Any] = {}
        self.last_measurement = "start"

    def measure(self, what: str, fn: Callable[[], Any], rv: Rendezvous | None = None) -> Any:
        """Run one tool invocation; a failure is recorded and the run goes on (None).

        With rv: first wait until every agent is attached (so an earlier outage does not
        bleed into this figure), and notice when an agent had to reconnect since the last
        look: that is a tunnel interruption, attributed to the previous measurement.
        """
        if rv is not None:
            self._watch(rv)
        try:
            return fn()
        except Fatal:
            raise
        except BenchError as exc:
            self.results.fail(f"{what}: {exc}")
            return None
        finally:
            if rv is not None:
                self.last_measurement = what
                # A settle time, not a wait for an event: a tunnel that breaks as the tool's connections
                # close does so within it, and is then blamed on this measurement, not the next one.
                time.sleep(0.3)
                self._watch(rv, wait=False)

    def _watch(self, rv: Rendezvous, wait: bool = True) -> None:
        if wait:
            rv.wait_attached(list(rv.targets), 60)
        status = rv.status()
        for sid in rv.targets:
            st = status[sid]
            ident = (st.get("agent_address"), st.get("service_connection_since")) if st.get("connected") else None
            known = self.identities.get(sid)
            already_down = isinstance(known, tuple) and known[0] == "down"
            if known is not None and ident != known and not already_down:
                why = st.get("last_disconnect_reason") or "?"
                self.results.interruptions.append(
                    f"service {sid}: the agent's WebSocket broke during or right after "
                    f"'{self.last_measurement}' ({why})")
                progress(f"  INTERRUPTION: {self.results.interruptions[-1]}")
            if ident is not None:
                self.identities[sid] = ident
            elif known is not None:
                self.identities[sid] = ("down", known)

    def tunnel_zero(self, what: str, value: float | None) -> None:
        if value is not None and value <= 0:
            self.results.fail(f"{what}: zero through the tunnel")

    # throughput: one deployment, two services (iperf3, nginx), one agent each; with group wss a third
    # service, iperf3 again, whose agent dials wss:// through the shipped nginx with a client certificate
    def throughput(self) -> None:
        s = self.s
        groups = s.only & {"bulk", "requests", "connections", "stall", "wss"}
        if not groups:
            return
        nginx = StaticFilesNginx(self.tmp)
        (iperf_port,) = free_ports(1)
        targets = {"iperf3": iperf_port, "nginx": nginx.port}
        if "wss" in groups:
            targets[WSS] = iperf_port
        rv = Rendezvous(s, self.tmp, "main", targets)
        self.logs += [rv.server_process]
        front = WssFront(self.tmp, rv.http_port) if "wss" in groups else None
        for sid in rv.targets:
            if sid == WSS and front is not None:
                self.logs.append(rv.start_agent_for(sid, *front.agent_options(), url=front.url(sid)))
            else:
                self.logs.append(rv.start_agent_for(sid))
        rv.wait_attached(list(rv.targets), 30)
        web = rv.services["nginx"]
        # smoke: the tunnel carries the small file unchanged
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/small.bin", timeout=10) as resp:
                body = resp.read()
        except OSError as exc:
            raise Fatal(f"GET /small.bin through the tunnel failed: {exc}") from None
        if body != nginx.small:
            raise Fatal(f"GET /small.bin through the tunnel: {len(body)} bytes, not the {SMALL_SIZE} nginx serves")
        progress(f"tunnel up: nginx {nginx.port} via {web}, iperf3 {iperf_port} via {rv.services['iperf3']}")

        r = self.results
        for rep in range(1, s.repeat + 1):
            progress(f"repetition {rep}/{s.repeat}")
            if groups & {"bulk", "wss"}:
                for reverse, parallel in ((False, 1), (True, 1), (False, 8), (True, 8)):
                    way = "service → user (-R)" if reverse else "user → service"
                    key = f"iperf3_{'down' if reverse else 'up'}_P{parallel}"
                    label = f"iperf3 {parallel} stream{'s' if parallel > 1 else ''}, {way}"
                    # direct, then through ws, then (group wss) through wss: both tunnel rows share the direct figure
                    paths = [(r.row(key, label, "Gbit/s"), "iperf3", "tunnel")]
                    if "wss" in groups:
                        paths.append((r.row(f"wss_{key}", f"{label}, wss via nginx", "Gbit/s"), WSS, "tunnel (wss)"))
                    run = lambda port, reverse=reverse, parallel=parallel: iperf3(  # noqa: E731
                        iperf_port, port, s.bulk_seconds, reverse, parallel, self.tmp)
                    direct = self.measure(f"{label} direct", lambda: run(iperf_port), rv)
                    progress(f"  {label} direct: {direct if direct is None else round(direct, 2)} Gbit/s")
                    for row, sid, target in paths:
                        row.direct.append(direct)
                        v = self.measure(f"{label} {target}", lambda sid=sid: run(rv.services[sid]), rv)
                        row.tunnel.append(v)
                        progress(f"  {label} {target}: {v if v is None else round(v, 2)} Gbit/s")
                        rv.check_alive()
                        self.tunnel_zero(row.label, v)
            if "requests" in groups or "stall" in groups:
                for c in (16, 64) if "requests" in groups else (64,):
                    self._wrk_rows(rv, nginx.port, web, c, f"wrk -c{c}", f"wrk_c{c}")
            if "connections" in groups:
                rps = r.row("ab_c32", "ab -c32, no keep-alive: connections", "conn/s", digits=0)
                fails = r.row("ab_c32_failed", "ab -c32: failed requests", f"of {s.ab_requests}", digits=0)
                fails.ratio = False
                for target, port in (("direct", nginx.port), ("tunnel", web)):
                    v = self.measure(f"ab -c32 {target}", lambda port=port: ab(port, 32, s.ab_requests), rv)
                    getattr(rps, target).append(None if v is None else v["cps"])
                    getattr(fails, target).append(None if v is None else v["failed"])
                    if v:
                        progress(f"  ab -c32 {target}: {v['cps']:.0f} conn/s, {v['failed']} failed")
                    rv.check_alive()
                self.tunnel_zero(rps.label, rps.tunnel[-1])
            if "stall" in groups:
                base = r.rows["wrk_c64_rps"]
                stalled_rps = self._wrk_rows(rv, nginx.port, web, 64, "wrk -c64, one download stalled",
                                             "stall_wrk_c64", stall=True)
                kept = r.row("stall_kept", "wrk -c64 while one download is stalled, req/s kept (stalled ÷ unstalled)",
                             "%", digits=1)
                kept.ratio = False
                for target in ("direct", "tunnel"):
                    b, v = getattr(base, target)[-1], stalled_rps[target]
                    getattr(kept, target).append(None if b is None or v is None or b <= 0 else 100.0 * v / b)
            rv.check_alive()

        # peak RSS of the programs over all of the above
        self.results.memory["peak"] = {"server": rv.server_process.tree_kib("VmHWM"),
                                       **{f"agent ({sid})": a.tree_kib("VmHWM") for sid, a in rv.agent_of.items()}}
        if s.profile and front is not None:
            self._profile_agent(rv, iperf_port, front)
        rv.stop()
        nginx.stop()
        if front is not None:
            front.stop()

    def _profile_agent(self, rv: Rendezvous, iperf_port: int, front: WssFront) -> None:
        """py-spy samples the wss agent while one iperf3 stream runs through it, each way: where its CPU goes;
        and the CPU time of agent, nginx and server during that run."""
        agent = rv.agent_of[WSS]
        pids = {"agent": agent.pid, "nginx": front.nginx.process.pid, "server": rv.server_process.pid}
        seconds = self.s.bulk_seconds
        for reverse in (False, True):
            way = "service → user" if reverse else "user → service"
            raw = self.tmp / f"py-spy-{'down' if reverse else 'up'}.txt"
            spy = start_process("py-spy", ["py-spy", "record", "--pid", str(agent.pid), "--subprocesses", "--native",
                                           "--rate", "200", "--duration", str(seconds), "--format", "raw",
                                           "--output", str(raw)], self.tmp / "py-spy.log")
            progress(f"  profiling the wss agent, {way}, {seconds} s")
            time.sleep(0.5)  # part of the method: py-spy attaches before the load starts, so it samples only load
            meter = CpuMeter({name: [pid] for name, pid in pids.items()})
            done = self.measure(f"profile {way} (wss)", lambda: iperf3(
                iperf_port, rv.services[WSS], seconds + 1, reverse, 1, self.tmp), rv)
            cores = meter.cores()
            try:
                spy.proc.wait(30)
                samples, shares = parse_pyspy_raw(raw.read_text() if raw.exists() else "")
            except (subprocess.TimeoutExpired, UnparsableOutput) as exc:
                self.results.fail(f"py-spy on the wss agent, {way}: {exc}: {spy.log()[-1000:]}")
                continue
            finally:
                spy.stop(5)
            self.results.profile[way] = {"samples": samples, "shares": shares, "cores": cores, "gbit": done}
            progress(f"  {way}: " + ", ".join(f"{k} {v * 100:.0f} %" for k, v in shares.items()))

    def _wrk_rows(self, rv: Rendezvous, direct: int, web: int, c: int, label: str, key: str,
                  stall: bool = False) -> dict[str, float | None]:
        r = self.results
        rps = r.row(f"{key}_rps", f"{label}: requests", "req/s", digits=0)
        p50 = r.row(f"{key}_p50", f"{label}: p50 latency", "ms", digits=2)
        p99 = r.row(f"{key}_p99", f"{label}: p99 latency", "ms", digits=2)
        err = r.row(f"{key}_errors", f"{label}: socket errors + non-2xx", "count", digits=0)
        err.ratio = False
        got: dict[str, float | None] = {}
        for target, port in (("direct", direct), ("tunnel", web)):
            def once(port: int = port) -> dict[str, float]:
                if not stall:
                    return wrk(port, c, self.s.wrk_seconds)
                download = StalledDownload(port, self.tmp)
                try:
                    v = wrk(port, c, self.s.wrk_seconds)
                    download.check()
                    return v
                finally:
                    download.close()

            v = self.measure(f"{label} {target}", once, rv)
            for row, name in ((rps, "rps"), (p50, "p50_ms"), (p99, "p99_ms"), (err, "errors")):
                getattr(row, target).append(None if v is None else v[name])
            got[target] = None if v is None else v["rps"]
            if v:
                progress(f"  {label} {target}: {v['rps']:.0f} req/s, p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms, "
                    f"{v['errors']} errors")
            rv.check_alive()
        self.tunnel_zero(rps.label, rps.tunnel[-1])
        return got

    # 1,000 idle streams through one agent, on a fresh server
    def idle_streams(self) -> None:
        n = self.s.idle_streams
        if "idle-streams" not in self.s.only or n <= 0:
            return
        progress(f"idle streams: {n} through one agent")
        echo = Service()
        rv = Rendezvous(self.s, self.tmp, "idle", {"idle": echo.port})
        self.logs += [rv.server_process, rv.start_agent_for("idle")]
        rv.wait_attached(["idle"], 30)
        port = rv.services["idle"]
        agent = rv.agent_of["idle"]
        try:
            # one stream first, so both processes have paid their one-time costs
            warm = socket.create_connection(("127.0.0.1", port), timeout=10)
            warm.sendall(b"warm\n")
            if warm.recv(16) != b"warm\n":
                raise BenchError("idle streams: the warm-up stream did not echo")
            warm.close()
            wait_for(lambda: rv.status()["idle"]["client_connection_count"] == 0, 10, "the warm-up stream to end")
            time.sleep(1.0)  # part of the figure: the "before" RSS is read once the processes are idle
            before = (rv.server_process.tree_kib(), agent.tree_kib())
            socks: list[socket.socket] = []
            t0 = time.monotonic()
            for i in range(n):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=10)
                    s.sendall(b"ping %d\n" % i)
                    socks.append(s)
                except OSError as exc:
                    self.results.fail(f"idle streams: connection {i} failed: {exc}")
                    break
            sel = selectors.DefaultSelector()
            pending = {}
            for i, s in enumerate(socks):
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, i)
                pending[s] = b"ping %d\n" % i
            got: dict[socket.socket, bytes] = {s: b"" for s in socks}
            ok = 0
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                for key, _ in sel.select(1.0):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(64)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(s)
                        pending.pop(s, None)
                        continue
                    got[s] += data
                    if got[s] == pending.get(s):
                        ok += 1
                        sel.unregister(s)
                        pending.pop(s)
            sel.close()
            open_seconds = time.monotonic() - t0
            time.sleep(2.0)  # part of the figure: the "with N streams" RSS is read with the streams idle
            status = rv.status()["idle"]
            rv.check_alive()
            after = (rv.server_process.tree_kib(), agent.tree_kib())
            fds = (rv.server_process.tree_fd_count(), agent.tree_fd_count())
            if ok < n:
                self.results.fail(f"idle streams: only {ok} of {n} streams echoed within 60 s "
                                  f"(server counts {status['client_connection_count']} open, service accepted {echo.accepted})")
            for s in socks:
                s.close()
            try:
                wait_for(lambda: rv.status()["idle"]["client_connection_count"] == 0, 5, "streams to close")
                left = 0
            except WaitTimeout:
                left = rv.status()["idle"]["client_connection_count"]
                self.results.fail(f"idle streams: {left} streams still open 5 s after all {n} users closed")
            time.sleep(1.0)  # part of the figure: the "after close" RSS is read once the closes settled
            closed = (rv.server_process.tree_kib(), agent.tree_kib())
            self.results.memory["idle_streams"] = {
                "asked": n, "opened": ok, "open_and_echo_seconds": round(open_seconds, 2),
                "server_counted_open": status["client_connection_count"], "service_accepted": echo.accepted - 1,
                "server_before_kib": before[0], "server_after_kib": after[0],
                "server_per_stream_kib": (after[0] - before[0]) / max(ok, 1),
                "agent_before_kib": before[1], "agent_after_kib": after[1],
                "agent_per_stream_kib": (after[1] - before[1]) / max(ok, 1),
                "server_fds_with_streams": fds[0], "agent_fds_with_streams": fds[1],
                "server_after_close_kib": closed[0], "agent_after_close_kib": closed[1],
                "left_open_after_close": left,
                "peak_kib": {"server": rv.server_process.tree_kib("VmHWM"), "agent": agent.tree_kib("VmHWM")},
            }
            progress(f"  server {mib(before[0])} -> {mib(after[0])}, agent {mib(before[1])} -> {mib(after[1])}; "
                f"{ok}/{n} streams echoed in {open_seconds:.1f} s")
        finally:
            rv.stop()
            echo.close()

    # N idle agents attached to one server with N services
    def many_agents(self) -> None:
        n = self.s.agents
        if "agents" not in self.s.only or n <= 0:
            return
        progress(f"idle agents: {n} agent processes, one server with {n} services")
        echo = Service()
        sids = [f"bus{i:04d}" for i in range(n)]
        rv = Rendezvous(self.s, self.tmp, "agents", {sid: echo.port for sid in sids})
        self.logs.append(rv.server_process)
        try:
            time.sleep(1.0)  # part of the figure: the "no agent" RSS of a server that finished starting
            before = rv.server_process.tree_kib()
            t0 = time.monotonic()
            batch = 20
            for i in range(0, n, batch):
                for sid in sids[i:i + batch]:
                    self.logs.append(rv.start_agent_for(sid))
                try:
                    rv.wait_attached(sids[i:i + batch], 60)
                except WaitTimeout as exc:  # an agent that died is ProcessDied: the run stops
                    self.results.fail(f"idle agents: {exc}")
                    break
            attach_seconds = time.monotonic() - t0
            time.sleep(3.0)  # part of the figure: RSS of idle agents, not of agents finishing their handshakes
            rv.check_alive()
            attached = len(rv.attached())
            after = rv.server_process.tree_kib()
            rss = [a.tree_kib() for a in rv.agent_of.values()]
            pss = [a.tree_pss_kib() for a in list(rv.agent_of.values())[:50]]  # smaps_rollup is slow-ish; a sample is enough
            if attached < n:
                self.results.notes.append(f"only {attached} of {n} agents attached")
            self.results.memory["agents"] = {
                "started": len(rv.agent_of), "attached": attached, "attach_seconds": attach_seconds,
                "server_before_kib": before, "server_after_kib": after,
                "server_per_agent_kib": (after - before) / max(attached, 1),
                "agent_rss_kib": [statistics.median(rss), min(rss), max(rss)],
                "agent_pss_kib_median": statistics.median(pss) if pss else 0,
                "agents_total_rss_kib": sum(rss),
                "server_fds": rv.server_process.tree_fd_count(),
            }
            progress(f"  server {mib(before)} -> {mib(after)} with {attached} agents; agent RSS median {mib(statistics.median(rss))}")
        finally:
            rv.stop()
            echo.close()

    def scan_logs(self) -> None:
        """ERROR/CRITICAL lines and tracebacks of the server and agents, counted when repeated."""
        self.results.log_problems = log_problems([(proc.name, proc.log()) for proc in self.logs])
