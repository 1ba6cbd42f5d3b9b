#!/usr/bin/env python3
"""The reverse_websockify benchmark: real tools, directly and through the tunnel, interleaved.

    python3 bench/run.py [--quick] [--binaries DIR] [--repeat N] [--out bench/results]

Everything runs on 127.0.0.1 and stops by itself. It starts its own nginx (a 1 KiB
and a 256 MiB file), iperf3 servers, an idle echo service, the reverse_websockify
server and agents (the package's CLIs, or the single-file binaries in DIR), and
runs iperf3, wrk, ab and curl against each service directly and through the tunnel,
alternating direct / tunnel within every repetition. See bench/README.md for what
each figure means.

No thresholds: the figures are for people. The exit status is 1 when a tool fails
to run, a figure through the tunnel is zero, or the server or an agent dies; 2 on a
usage error or a missing tool.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
SERVER_NAME = "reverse_websockify_server"
AGENT_NAME = "reverse_websockify_agent_service_side"
TOOLS = ("iperf3", "wrk", "ab", "nginx", "curl")
SMALL_SIZE = 1024
LARGE_SIZE = 256 * 1024 * 1024


class BenchError(Exception):
    """Something that makes a figure meaningless: a tool failed, the tunnel carried nothing."""


class Fatal(BenchError):
    """The run cannot go on (the server or an agent died, a service would not start)."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------


@dataclass
class Settings:
    quick: bool
    repeat: int
    bulk_seconds: int
    wrk_seconds: int
    ab_requests: int
    idle_streams: int
    agents: int
    binaries: Path | None
    log_level: str | None
    only: set[str]
    event_loop: str | None = None

    @property
    def mode(self) -> str:
        return f"binaries ({self.binaries})" if self.binaries else "package (python3 -m reverse_websockify.cli.*)"


GROUPS = ("bulk", "requests", "connections", "stall", "idle-streams", "agents")


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark reverse_websockify against direct connections with iperf3, wrk, ab "
        "(loopback only; stops by itself). See bench/README.md.",
    )
    p.add_argument("--quick", action="store_true",
                   help="1 repetition, short durations, 50 agents: the CI smoke run (< 3 min)")
    p.add_argument("--binaries", metavar="DIR", type=Path,
                   help=f"run DIR/{SERVER_NAME} and DIR/{AGENT_NAME} instead of the package")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions (default 3; 1 with --quick)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", metavar="DIR",
                   help="where the .md and .json go (default bench/results)")
    p.add_argument("--bulk-seconds", type=int, metavar="S", help="iperf3 -t (default 8; 2 with --quick)")
    p.add_argument("--wrk-seconds", type=int, metavar="S", help="wrk -d (default 8; 2 with --quick)")
    p.add_argument("--ab-requests", type=int, metavar="N", help="ab -n (default 20000; 3000 with --quick)")
    p.add_argument("--idle-streams", type=int, metavar="N", help="idle streams through one agent (default 1000)")
    p.add_argument("--agents", type=int, metavar="N", help="idle agents attached at once (default 200; 50 with --quick)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="passed to server and agents (default: theirs, INFO)")
    p.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"],
                   help="passed to server and agents (default: theirs, auto = uvloop when installed)")
    p.add_argument("--only", metavar="GROUPS", help=f"comma-separated subset of: {', '.join(GROUPS)}")
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when the server/agent logs hold an ERROR or traceback, or a tunnel broke")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temporary directory (logs, configs)")
    p.add_argument("--time-limit", type=int, metavar="S",
                   help="abort the whole run after S seconds (default 300 with --quick, 1800 otherwise)")
    a = p.parse_args(argv)
    q = a.quick
    only = set(GROUPS)
    if a.only:
        only = {g.strip() for g in a.only.split(",") if g.strip()}
        unknown = only - set(GROUPS)
        if unknown:
            p.error(f"--only: unknown group(s) {', '.join(sorted(unknown))}; choose from {', '.join(GROUPS)}")
    s = Settings(
        quick=q,
        repeat=a.repeat if a.repeat is not None else (1 if q else 3),
        bulk_seconds=a.bulk_seconds or (2 if q else 8),
        wrk_seconds=a.wrk_seconds or (2 if q else 8),
        ab_requests=a.ab_requests or (3000 if q else 20000),
        idle_streams=a.idle_streams if a.idle_streams is not None else 1000,
        agents=a.agents if a.agents is not None else (50 if q else 200),
        binaries=a.binaries.resolve() if a.binaries else None,
        log_level=a.log_level,
        only=only,
        event_loop=a.event_loop,
    )
    if s.repeat < 1:
        p.error("--repeat must be at least 1")
    if a.time_limit is None:
        a.time_limit = 300 if q else 1800
    return s, a


# -- processes -----------------------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Fatal(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants (a PyInstaller one-file program is a bootloader plus a child)."""
    pids, i = [pid], 0
    while i < len(pids):
        p = pids[i]
        i += 1
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                try:
                    pids += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return pids


def status_kib(pid: int, name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """A process we started; its output goes to a file. Stopped (and SIGCONT'd) at exit."""

    registry: list["Proc"] = []

    def __init__(self, name: str, args: list[str], log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, env=env)
        Proc.registry.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kib(self, name: str = "VmRSS") -> int:
        return sum(status_kib(p, name) for p in tree_pids(self.pid))

    def pss(self) -> int:
        return sum(pss_kib(p) for p in tree_pids(self.pid))

    def fds(self) -> int:
        total = 0
        for p in tree_pids(self.pid):
            try:
                total += len(os.listdir(f"/proc/{p}/fd"))
            except OSError:
                pass
        return total

    def send(self, sig: int) -> None:
        if self.alive():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.send(signal.SIGCONT)
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode

    @classmethod
    def stop_all(cls) -> None:
        for proc in reversed(cls.registry):
            try:
                proc.stop(5)
            except Exception:  # noqa: BLE001 — best effort at exit
                pass


def run_tool(args: list[str], timeout: float, what: str) -> str:
    """Run a load tool to completion; its failure or a hang is a BenchError with its output."""
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, errors="replace",
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        raise BenchError(f"{what}: did not finish within {timeout:g} s: {' '.join(args)}\n{out[-1500:]}") from None
    if done.returncode != 0:
        raise BenchError(f"{what}: {args[0]} exited with {done.returncode}: {' '.join(args)}\n"
                         f"{(done.stdout + done.stderr)[-1500:]}")
    return done.stdout + ("\n" + done.stderr if done.stderr else "")


# -- services ------------------------------------------------------------------------------


class Nginx:
    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "nginx"
        www = self.dir / "www"
        www.mkdir(parents=True)
        (self.dir / "tmp").mkdir()
        (www / "small.bin").write_bytes(os.urandom(SMALL_SIZE))
        with open(www / "large.bin", "wb") as f:  # sparse: no disk, served from the page cache
            f.truncate(LARGE_SIZE)
        for path in (tmp, self.dir, www, www / "small.bin", www / "large.bin"):  # workers may run as nobody
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.small = (www / "small.bin").read_bytes()
        (self.port,) = free_ports(1)
        t = self.dir / "tmp"
        conf = f"""
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    client_body_temp_path {t}/client;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        root {www};
    }}
}}
"""
        (self.dir / "nginx.conf").write_text(conf)
        self.proc = Proc("nginx", ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                   "-e", str(self.dir / "error.log")], tmp / "nginx.log")
        wait_for(lambda: port_open(self.port) or self._died(), 10, "nginx to listen")

    def _died(self) -> bool:
        if not self.proc.alive():
            raise Fatal(f"nginx exited: {self.proc.log()}{(self.dir / 'error.log').read_text(errors='replace')}")
        return False


class IdleEchoServer:
    """A TCP service in a thread that holds every connection and echoes what it gets (tiny)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ)
        self.conns: set[socket.socket] = set()
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(0.2):
                s = key.fileobj
                if s is self.sock:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    self.conns.add(conn)
                    self.accepted += 1
                    self.sel.register(conn, selectors.EVENT_READ)
                    continue
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        s.send(data)
                    except OSError:
                        pass
                else:
                    self.sel.unregister(s)
                    self.conns.discard(s)
                    s.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for conn in list(self.conns):
            conn.close()
        self.sock.close()


# -- the tunnel ----------------------------------------------------------------------------


def program(settings: Settings, name: str) -> list[str]:
    if settings.binaries:
        return [str(settings.binaries / name)]
    module = "server" if name == SERVER_NAME else "agent"
    return [sys.executable, "-m", f"reverse_websockify.cli.{module}"]


def program_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Rendezvous:
    """One reverse_websockify server, its config, and the agents attached to it."""

    def __init__(self, settings: Settings, tmp: Path, name: str, targets: dict[str, int]) -> None:
        """targets: service ID -> port of the TCP service its agent dials."""
        self.settings = settings
        self.dir = tmp / name
        self.dir.mkdir()
        self.name = name
        self.targets = targets
        ports = free_ports(len(targets) + 1)
        self.http_port = ports[0]
        self.listen = dict(zip(targets, ports[1:]))
        lines = [f'http_server_endpoint = "127.0.0.1:{self.http_port}"', ""]
        for sid, port in self.listen.items():
            lines += [f"[remote_service.{sid}]", f'nickname = "{sid}"', f'local_listen_endpoint = "127.0.0.1:{port}"']
        self.config = self.dir / "config.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.agents: dict[str, Proc] = {}
        self.server = Proc(f"{name} server", program(settings, SERVER_NAME) + [str(self.config)] + self._log_flags(),
                           self.dir / "server.log", env=program_env())
        wait_for(self._http_up, 30, f"{name} server to answer /healthz")

    def _log_flags(self) -> list[str]:
        flags = [f"--log-level={self.settings.log_level}"] if self.settings.log_level else []
        if self.settings.event_loop:
            flags.append(f"--event-loop={self.settings.event_loop}")
        return flags

    def _http_up(self) -> bool:
        if not self.server.alive():
            raise Fatal(f"{self.name} server exited with {self.server.proc.returncode}:\n{self.server.log()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1):
                return True
        except OSError:
            return False

    def start_agent(self, sid: str) -> Proc:
        url = f"ws://127.0.0.1:{self.http_port}/forward_to_me/{sid}"
        agent = Proc(f"{self.name} agent {sid}",
                     program(self.settings, AGENT_NAME) + [f"--service=127.0.0.1:{self.targets[sid]}",
                                                           f"--reverse-websockify={url}"] + self._log_flags(),
                     self.dir / f"agent-{sid}.log", env=program_env())
        self.agents[sid] = agent
        return agent

    def status(self) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/", headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def attached(self) -> set[str]:
        return {sid for sid, s in self.status().items() if s.get("connected")}

    def wait_attached(self, sids: list[str], timeout: float) -> None:
        def ok() -> bool:
            self.check_alive()
            return set(sids) <= self.attached()

        wait_for(ok, timeout, f"agents {', '.join(sids[:5])}{'...' if len(sids) > 5 else ''} to attach", 0.2)

    def check_alive(self) -> None:
        for proc in [self.server, *self.agents.values()]:
            if not proc.alive():
                raise Fatal(f"{proc.name} died with exit status {proc.proc.returncode}:\n{proc.log()[-3000:]}")

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.send(signal.SIGTERM)
        for agent in self.agents.values():
            agent.stop(10)
        self.server.stop(10)

    def logs(self) -> list[Proc]:
        return [self.server, *self.agents.values()]


# -- tools ---------------------------------------------------------------------------------


def iperf3(port_direct: int, port: int, seconds: int, reverse: bool, parallel: int, tmp: Path) -> float:
    """One iperf3 test against a fresh one-off iperf3 server; Gbit/s at the receiver."""
    server = Proc("iperf3 -s", ["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port_direct)],
                  tmp / "iperf3-server.log")
    try:
        wait_for(lambda: _listening(port_direct) or _exited(server), 10, "iperf3 server to listen")
        args = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
        if reverse:
            args.append("-R")
        if parallel > 1:
            args += ["-P", str(parallel)]
        try:
            out = run_tool(args, seconds + 30, "iperf3")
        except BenchError as exc:
            raise BenchError(f"{exc}\niperf3 server said: {server.log()[-1000:]}") from None
        data = json.loads(out[: out.rfind("}") + 1])
        if data.get("error"):
            raise BenchError(f"iperf3: {data['error']}: {' '.join(args)}")
        bps = data["end"]["sum_received"]["bits_per_second"]
        return bps / 1e9
    finally:
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        server.stop(5)


def _listening(port: int) -> bool:
    """Is something listening on 127.0.0.1:port? (without connecting: iperf3 -1 takes one client only)"""
    hexport = f"{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1].endswith(":" + hexport) and parts[3] == "0A":
            return True
    return False


def _exited(proc: Proc) -> bool:
    if not proc.alive():
        raise BenchError(f"{proc.name} exited early: {proc.log()[-1000:]}")
    return False


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(port: int, connections: int, seconds: int) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
            f"http://127.0.0.1:{port}/small.bin"]
    out = run_tool(args, seconds + 30, "wrk")
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    if not m or not n:
        raise BenchError(f"wrk: cannot parse its output: {' '.join(args)}\n{out[-1500:]}")
    latency = {int(p): float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                                                      out, re.M)}
    errors = 0
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        errors += sum(int(x) for x in e.groups())
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        errors += int(bad.group(1))
    return {"rps": float(m.group(1)), "requests": int(n.group(1)), "p50_ms": latency.get(50, float("nan")),
            "p99_ms": latency.get(99, float("nan")), "errors": errors}


def ab(port: int, concurrency: int, requests: int) -> dict[str, float]:
    args = ["ab", "-q", "-r", "-s", "10", "-c", str(concurrency), "-n", str(requests),
            f"http://127.0.0.1:{port}/small.bin"]
    out = run_tool(args, 180, "ab")
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    c = re.search(r"Complete requests:\s+(\d+)", out)
    f = re.search(r"Failed requests:\s+(\d+)", out)
    if not m or not c or not f:
        raise BenchError(f"ab: cannot parse its output: {' '.join(args)}\n{out[-1500:]}")
    failed = int(f.group(1))
    bad = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if bad:
        failed += int(bad.group(1))
    return {"cps": float(m.group(1)), "complete": int(c.group(1)), "failed": failed}


class StalledDownload:
    """curl fetching the large file; once bytes arrive it is SIGSTOPped: its socket stops being read."""

    def __init__(self, port: int, tmp: Path) -> None:
        self.file = tmp / f"stalled-{port}.bin"
        self.proc = Proc("curl (stalled)", ["curl", "-sS", "--max-time", "300", "--limit-rate", "8M",
                                            "-o", str(self.file), f"http://127.0.0.1:{port}/large.bin"],
                         tmp / f"curl-{port}.log")
        try:
            wait_for(lambda: self._size() >= 1 << 20 or _exited(self.proc), 15, "the download to start")
        except BenchError:
            self.close()
            raise
        self.proc.send(signal.SIGSTOP)
        time.sleep(1.0)  # let every buffer on the way fill up
        self.stalled_at = self._size()

    def _size(self) -> int:
        try:
            return self.file.stat().st_size
        except OSError:
            return 0

    def check(self) -> None:
        if not self.proc.alive():
            raise BenchError(f"the stalled download ended by itself: {self.proc.log()[-500:]}")
        if self._size() >= LARGE_SIZE:
            raise BenchError("the stalled download completed: it was never stalled")

    def close(self) -> None:
        self.proc.send(signal.SIGKILL)
        self.proc.send(signal.SIGCONT)
        self.proc.stop(5)
        try:
            self.file.unlink()
        except OSError:
            pass


# -- the results ---------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str
    direct: list[float | None] = field(default_factory=list)
    tunnel: list[float | None] = field(default_factory=list)
    digits: int = 2
    ratio: bool = True  # tunnel/direct; for latencies and failures it is still tunnel/direct

    def ratios(self) -> list[float]:
        out = []
        for d, t in zip(self.direct, self.tunnel):
            if d is not None and t is not None and d > 0:
                out.append(t / d)
        return out


def median_spread(values: list[float | None]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


def fmt(stats: tuple[float, float, float] | None, digits: int, pct: bool = False) -> str:
    if stats is None:
        return "–"
    med, lo, hi = stats
    if pct:
        text = f"{med * 100:.1f} %"
        return text if lo == hi else f"{text} ({lo * 100:.1f}–{hi * 100:.1f})"
    text = f"{med:,.{digits}f}"
    return text if lo == hi else f"{text} ({lo:,.{digits}f}–{hi:,.{digits}f})"


class Results:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rows: dict[str, Row] = {}
        self.memory: dict[str, Any] = {}
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.log_problems: list[str] = []
        self.interruptions: list[str] = []
        self.header: dict[str, Any] = {}

    def row(self, key: str, label: str, unit: str, digits: int = 2) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, digits=digits)
        return self.rows[key]

    def fail(self, message: str) -> None:
        log("FAILED: " + message.splitlines()[0])
        self.failures.append(message)

    def to_json(self) -> dict[str, Any]:
        return {
            "header": self.header,
            "settings": {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                         for k, v in vars(self.settings).items()},
            "throughput": {
                r.key: {
                    "label": r.label, "unit": r.unit, "direct": r.direct, "tunnel": r.tunnel,
                    "ratio": r.ratios(),
                    "median": {"direct": _med(r.direct), "tunnel": _med(r.tunnel), "ratio": _med(r.ratios())},
                } for r in self.rows.values()
            },
            "memory": self.memory,
            "failures": self.failures,
            "notes": self.notes,
            "log_problems": self.log_problems,
            "tunnel_interruptions": self.interruptions,
        }

    def markdown(self) -> str:
        h = self.header
        out = [
            f"### reverse_websockify {h.get('version', '?')} benchmark, {h.get('date', '?')}",
            "",
            f"- machine: {h.get('cores')} cores ({h.get('cpu')}), Linux {h.get('kernel')}, "
            f"load average at start {h.get('loadavg_start')}",
            f"- programs: {h.get('mode')}: {h.get('program_version')}; event loop: "
            f"{h.get('event_loop') or 'default (auto)'}",
            f"- Python {h.get('python')}, websockets {h.get('websockets')}; git {h.get('git')}",
            f"- tools: {h.get('tools')}",
            f"- {self.settings.repeat} repetition(s){' (--quick)' if self.settings.quick else ''}; "
            f"iperf3 -t {self.settings.bulk_seconds}, wrk -t2 -d{self.settings.wrk_seconds}s, "
            f"ab -n {self.settings.ab_requests}; median (min–max); tunnel/direct is the median of the "
            f"per-repetition ratios; run took {h.get('duration_s', '?')} s",
            "",
        ]
        if self.rows:
            out += ["| test | unit | direct | tunnel | tunnel/direct |", "|---|---|---:|---:|---:|"]
            for r in self.rows.values():
                ratio = "–" if not r.ratio else fmt(median_spread(r.ratios()), 2, pct=True)
                out.append(f"| {r.label} | {r.unit} | {fmt(median_spread(r.direct), r.digits)} | "
                           f"{fmt(median_spread(r.tunnel), r.digits)} | {ratio} |")
            out.append("")
        if self.memory:
            out += ["| memory | value |", "|---|---:|"]
            for label, value in memory_lines(self.memory):
                out.append(f"| {label} | {value} |")
            out.append("")
        for note in self.notes:
            out.append(f"- note: {note}")
        if self.failures:
            out.append("")
            out.append(f"**{len(self.failures)} failure(s):**")
            for f in self.failures:
                out.append(f"- `{f.splitlines()[0]}`")
        if self.interruptions:
            out.append("")
            out.append(f"**{len(self.interruptions)} tunnel interruption(s)** (an agent's WebSocket broke and it "
                       "reconnected; the next measurement waited for it):")
            out += [f"- {i}" for i in self.interruptions]
        if self.log_problems:
            out.append("")
            out.append(f"**Errors in the server/agent logs ({len(self.log_problems)} distinct, first 10):**")
            out.append("```")
            out += self.log_problems[:10]
            out.append("```")
        return "\n".join(out) + "\n"


def _med(values: list[float | None]) -> float | None:
    s = median_spread(values)
    return None if s is None else s[0]


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def memory_lines(m: dict[str, Any]) -> list[tuple[str, str]]:
    lines = []
    peak = m.get("peak")
    if peak:
        for name, kib in peak.items():
            lines.append((f"peak RSS (VmHWM) during the throughput tests: {name}", mib(kib)))
    idle = m.get("idle_streams")
    if idle:
        n = idle["opened"]
        lines += [
            (f"idle streams: opened and echoed / asked", f"{n} / {idle['asked']}"),
            (f"server RSS before → with {n} idle streams", f"{mib(idle['server_before_kib'])} → {mib(idle['server_after_kib'])}"),
            ("server RSS per idle stream", f"{idle['server_per_stream_kib']:.1f} KiB"),
            (f"agent RSS before → with {n} idle streams", f"{mib(idle['agent_before_kib'])} → {mib(idle['agent_after_kib'])}"),
            ("agent RSS per idle stream", f"{idle['agent_per_stream_kib']:.1f} KiB"),
            ("streams still open 5 s after the users closed (leak check)", str(idle["left_open_after_close"])),
        ]
    ag = m.get("agents")
    if ag:
        n = ag["attached"]
        lines += [
            ("idle agents attached / started", f"{n} / {ag['started']}"),
            (f"server RSS with no agent → with {n} agents", f"{mib(ag['server_before_kib'])} → {mib(ag['server_after_kib'])}"),
            ("server RSS per idle agent", f"{ag['server_per_agent_kib']:.1f} KiB"),
            ("agent process RSS (median, min–max)", f"{mib(ag['agent_rss_kib'][0])} ({mib(ag['agent_rss_kib'][1])}–{mib(ag['agent_rss_kib'][2])})"),
            ("agent process PSS, shared pages split (median)", mib(ag["agent_pss_kib_median"])),
            ("time for all agents to attach", f"{ag['attach_seconds']:.1f} s"),
        ]
    return lines


# -- the tests -----------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.s = settings
        self.tmp = tmp
        self.results = Results(settings)
        self.logs: list[Proc] = []
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
                time.sleep(0.3)  # a tunnel that breaks as the tool's connections close does so now
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
                log(f"  INTERRUPTION: {self.results.interruptions[-1]}")
            if ident is not None:
                self.identities[sid] = ident
            elif known is not None:
                self.identities[sid] = ("down", known)

    def tunnel_zero(self, what: str, value: float | None) -> None:
        if value is not None and value <= 0:
            self.results.fail(f"{what}: zero through the tunnel")

    # throughput: one deployment, two services (iperf3, nginx), one agent each
    def throughput(self) -> None:
        s = self.s
        groups = s.only & {"bulk", "requests", "connections", "stall"}
        if not groups:
            return
        nginx = Nginx(self.tmp)
        (iperf_port,) = free_ports(1)
        rv = Rendezvous(s, self.tmp, "main", {"iperf3": iperf_port, "nginx": nginx.port})
        self.logs += [rv.server]
        for sid in rv.targets:
            self.logs.append(rv.start_agent(sid))
        rv.wait_attached(list(rv.targets), 30)
        web = rv.listen["nginx"]
        # smoke: the tunnel carries the small file unchanged
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/small.bin", timeout=10) as resp:
                body = resp.read()
        except OSError as exc:
            raise Fatal(f"GET /small.bin through the tunnel failed: {exc}") from None
        if body != nginx.small:
            raise Fatal(f"GET /small.bin through the tunnel: {len(body)} bytes, not the {SMALL_SIZE} nginx serves")
        log(f"tunnel up: nginx {nginx.port} via {web}, iperf3 {iperf_port} via {rv.listen['iperf3']}")

        r = self.results
        for rep in range(1, s.repeat + 1):
            log(f"repetition {rep}/{s.repeat}")
            if "bulk" in groups:
                for reverse, parallel in ((False, 1), (True, 1), (False, 8), (True, 8)):
                    way = "service → user (-R)" if reverse else "user → service"
                    key = f"iperf3_{'down' if reverse else 'up'}_P{parallel}"
                    row = r.row(key, f"iperf3 {parallel} stream{'s' if parallel > 1 else ''}, {way}", "Gbit/s")
                    for target, port in (("direct", iperf_port), ("tunnel", rv.listen["iperf3"])):
                        v = self.measure(f"{row.label} {target}",
                                         lambda port=port: iperf3(iperf_port, port, s.bulk_seconds, reverse, parallel, self.tmp),
                                         rv)
                        getattr(row, target).append(v)
                        log(f"  {row.label} {target}: {v if v is None else round(v, 2)} Gbit/s")
                        rv.check_alive()
                    self.tunnel_zero(row.label, row.tunnel[-1])
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
                        log(f"  ab -c32 {target}: {v['cps']:.0f} conn/s, {v['failed']} failed")
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
        self.results.memory["peak"] = {"server": rv.server.kib("VmHWM"),
                                       **{f"agent ({sid})": a.kib("VmHWM") for sid, a in rv.agents.items()}}
        rv.stop()
        nginx.proc.stop()

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
                log(f"  {label} {target}: {v['rps']:.0f} req/s, p50 {v['p50_ms']:.2f} ms, p99 {v['p99_ms']:.2f} ms, "
                    f"{v['errors']} errors")
            rv.check_alive()
        self.tunnel_zero(rps.label, rps.tunnel[-1])
        return got

    # 1,000 idle streams through one agent, on a fresh server
    def idle_streams(self) -> None:
        n = self.s.idle_streams
        if "idle-streams" not in self.s.only or n <= 0:
            return
        log(f"idle streams: {n} through one agent")
        echo = IdleEchoServer()
        rv = Rendezvous(self.s, self.tmp, "idle", {"idle": echo.port})
        self.logs += [rv.server, rv.start_agent("idle")]
        rv.wait_attached(["idle"], 30)
        port = rv.listen["idle"]
        agent = rv.agents["idle"]
        try:
            # one stream first, so both processes have paid their one-time costs
            warm = socket.create_connection(("127.0.0.1", port), timeout=10)
            warm.sendall(b"warm\n")
            if warm.recv(16) != b"warm\n":
                raise BenchError("idle streams: the warm-up stream did not echo")
            warm.close()
            wait_for(lambda: rv.status()["idle"]["client_connection_count"] == 0, 10, "the warm-up stream to end")
            time.sleep(1.0)
            before = (rv.server.kib(), agent.kib())
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
            time.sleep(2.0)
            status = rv.status()["idle"]
            rv.check_alive()
            after = (rv.server.kib(), agent.kib())
            fds = (rv.server.fds(), agent.fds())
            if ok < n:
                self.results.fail(f"idle streams: only {ok} of {n} streams echoed within 60 s "
                                  f"(server counts {status['client_connection_count']} open, service accepted {echo.accepted})")
            for s in socks:
                s.close()
            try:
                wait_for(lambda: rv.status()["idle"]["client_connection_count"] == 0, 5, "streams to close")
                left = 0
            except Fatal:
                left = rv.status()["idle"]["client_connection_count"]
                self.results.fail(f"idle streams: {left} streams still open 5 s after all {n} users closed")
            time.sleep(1.0)
            closed = (rv.server.kib(), agent.kib())
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
                "peak_kib": {"server": rv.server.kib("VmHWM"), "agent": agent.kib("VmHWM")},
            }
            log(f"  server {mib(before[0])} -> {mib(after[0])}, agent {mib(before[1])} -> {mib(after[1])}; "
                f"{ok}/{n} streams echoed in {open_seconds:.1f} s")
        finally:
            rv.stop()
            echo.close()

    # N idle agents attached to one server with N services
    def many_agents(self) -> None:
        n = self.s.agents
        if "agents" not in self.s.only or n <= 0:
            return
        log(f"idle agents: {n} agent processes, one server with {n} services")
        echo = IdleEchoServer()
        sids = [f"bus{i:04d}" for i in range(n)]
        rv = Rendezvous(self.s, self.tmp, "agents", {sid: echo.port for sid in sids})
        self.logs.append(rv.server)
        try:
            time.sleep(1.0)
            before = rv.server.kib()
            t0 = time.monotonic()
            batch = 20
            for i in range(0, n, batch):
                for sid in sids[i:i + batch]:
                    self.logs.append(rv.start_agent(sid))
                try:
                    rv.wait_attached(sids[i:i + batch], 60)
                except Fatal as exc:
                    if any(not a.alive() for a in rv.agents.values()):
                        raise
                    self.results.fail(f"idle agents: {exc}")
                    break
            attach_seconds = time.monotonic() - t0
            time.sleep(3.0)
            rv.check_alive()
            attached = len(rv.attached())
            after = rv.server.kib()
            rss = [a.kib() for a in rv.agents.values()]
            pss = [a.pss() for a in list(rv.agents.values())[:50]]  # smaps_rollup is slow-ish; a sample is enough
            if attached < n:
                self.results.notes.append(f"only {attached} of {n} agents attached")
            self.results.memory["agents"] = {
                "started": len(rv.agents), "attached": attached, "attach_seconds": attach_seconds,
                "server_before_kib": before, "server_after_kib": after,
                "server_per_agent_kib": (after - before) / max(attached, 1),
                "agent_rss_kib": [statistics.median(rss), min(rss), max(rss)],
                "agent_pss_kib_median": statistics.median(pss) if pss else 0,
                "agents_total_rss_kib": sum(rss),
                "server_fds": rv.server.fds(),
            }
            log(f"  server {mib(before)} -> {mib(after)} with {attached} agents; agent RSS median {mib(statistics.median(rss))}")
        finally:
            rv.stop()
            echo.close()

    def scan_logs(self) -> None:
        """ERROR/CRITICAL lines and tracebacks (as 'last frame → exception'), counted when repeated."""
        counts: dict[str, int] = {}
        for proc in self.logs:
            lines = proc.log().splitlines()
            i = 0
            while i < len(lines):
                line = lines[i]
                entry = None
                if line.startswith("Traceback"):
                    frame = ""
                    i += 1
                    while i < len(lines) and (lines[i].startswith(" ") or not lines[i].strip()):
                        m = re.match(r'\s+File "([^"]+)", line (\d+), in (\S+)', lines[i])
                        if m and "/asyncio/" not in m.group(1) and "/websockets/" not in m.group(1):
                            frame = f"{Path(m.group(1)).name}:{m.group(2)} in {m.group(3)}"
                        i += 1
                    exc = lines[i].strip() if i < len(lines) else "?"
                    entry = f"{proc.name}: traceback at {frame or '?'} → {exc[:200]}"
                elif re.search(r"\b(ERROR|CRITICAL)\b", line):
                    # drop the timestamp; stream numbers and ports vary, keep the rest
                    text = re.sub(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+Z? ", "", line.strip())
                    entry = f"{proc.name}: {text[:300]}"
                if entry is not None:
                    counts[entry] = counts.get(entry, 0) + 1
                i += 1
        self.results.log_problems = [f"{n}× {e}" if n > 1 else e for e, n in counts.items()]


# -- the header ----------------------------------------------------------------------------


def header(settings: Settings) -> dict[str, Any]:
    h: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "mode": "binaries" if settings.binaries else "package",
        "binaries": str(settings.binaries) if settings.binaries else None,
        "event_loop": settings.event_loop,
        "bench_python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                h["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = run_tool(program(settings, SERVER_NAME) + ["--version"], 60, "server --version").strip()
    h["program_version"] = version.splitlines()[0] if version else "?"
    m = re.search(r" (\S+?)(?: \(single-file build\))?; Python (\S+), websockets (\S+)", h["program_version"])
    if m:
        h["version"], h["python"], h["websockets"] = m.group(1), m.group(2), m.group(3)
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "reverse_websockify"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        h["git"] = commit + (" + uncommitted changes in reverse_websockify/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        h["git"] = "?"
    tools = []
    for args, pattern in ((["iperf3", "--version"], r"iperf (\S+)"), (["wrk", "-v"], r"wrk (\S+)"),
                          (["ab", "-V"], r"Version (\S+)"), (["nginx", "-v"], r"nginx/(\S+)"),
                          (["curl", "--version"], r"curl (\S+)")):
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=10)
            m = re.search(pattern, done.stdout + done.stderr)
            tools.append(f"{args[0]} {m.group(1) if m else '?'}")
        except (OSError, subprocess.SubprocessError):
            tools.append(f"{args[0]} ?")
    h["tools"] = ", ".join(tools)
    return h


# -- main ----------------------------------------------------------------------------------


class TimeLimit(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    missing = [t for t in TOOLS if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]
    if missing:
        print(f"bench/run.py: error: missing tools: {', '.join(missing)} "
              "(apt-get install iperf3 wrk apache2-utils nginx-light curl)", file=sys.stderr)
        return 2
    if settings.binaries:
        for name in (SERVER_NAME, AGENT_NAME):
            if not os.access(settings.binaries / name, os.X_OK):
                print(f"bench/run.py: error: {settings.binaries / name} is not an executable", file=sys.stderr)
                return 2
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

    # 1,000 streams are ~4,000 sockets across our processes; 200 agents a few hundred more.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if settings.idle_streams * 2 + 200 > soft:
        new = max(0, (soft - 200) // 2)
        print(f"bench/run.py: only {soft} file descriptors allowed: {new} idle streams instead of "
              f"{settings.idle_streams}", file=sys.stderr)
        settings.idle_streams = new

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeLimit(f"the run took longer than --time-limit {args.time_limit} s")

    signal.signal(signal.SIGALRM, on_alarm)
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.time_limit)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    bench = Bench(settings, tmp)
    results = bench.results
    code = 0
    try:
        results.header = header(settings)
        log(f"reverse_websockify benchmark: {results.header['program_version']}; tmp {tmp}")
        bench.throughput()
        bench.idle_streams()
        bench.many_agents()
    except (Fatal, TimeLimit) as exc:
        results.fail(f"aborted: {exc}")
    except BenchError as exc:
        results.fail(str(exc))
    except KeyboardInterrupt:
        results.fail("interrupted")
    finally:
        signal.alarm(0)
        Proc.stop_all()
        bench.scan_logs()
    results.header["duration_s"] = round(time.monotonic() - started)
    results.header["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if settings.quick:
        results.notes.append(f"--quick: 1 repetition, short durations, {settings.agents} agents instead of 200")
    elif settings.agents != 200:
        results.notes.append(f"{settings.agents} agents instead of 200")

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = results.markdown()
    (args.out / f"bench-{stamp}.md").write_text(md)
    (args.out / f"bench-{stamp}.json").write_text(json.dumps(results.to_json(), indent=2) + "\n")
    print(md)
    log(f"wrote {args.out / f'bench-{stamp}.md'} and .json in {results.header['duration_s']} s")
    if args.strict and (results.log_problems or results.interruptions):
        results.failures.append(f"--strict: {len(results.log_problems)} error line(s) in the logs, "
                                f"{len(results.interruptions)} tunnel interruption(s)")
    if results.failures:
        code = 1
        log(f"{len(results.failures)} failure(s); details in the JSON. Logs kept in {tmp}")
        for f in results.failures:
            print(f"FAILED: {f}", file=sys.stderr)
    elif not args.keep_tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        log(f"logs kept in {tmp}")
    return code


if __name__ == "__main__":
    sys.exit(main())
