"""What the benchmark measures against: nginx with two files, the rendezvous, a stalled download, the
reference deployment's wss front (nginx with client certificates), the link emulator, redis and PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.errors import BenchError
from bench.processes import exited_early, register, start_process
from bench.settings import Settings
from bench.tools import run_tool
from tests.support import probes
from tests.support.certs import agent_tls_flags, make_client_cert, make_server_cert
from tests.support.deployment import Deployment
from tests.support.nginx import Nginx, ShippedNginx
from tests.support.ports import free_ports, listening
from tests.support.processes import Process
from tests.support.waiting import WaitTimeout, wait_for

SMALL_SIZE = 1024
LARGE_SIZE = 256 * 1024 * 1024


class StaticFilesNginx:
    """nginx serving small.bin (1 KiB, random) and large.bin (256 MiB, sparse), tuned for load tools."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "nginx"
        www = self.dir / "www"
        www.mkdir(parents=True)
        (www / "small.bin").write_bytes(os.urandom(SMALL_SIZE))
        with open(www / "large.bin", "wb") as f:  # sparse: no disk, served from the page cache
            f.truncate(LARGE_SIZE)
        for path in (tmp, self.dir, www, www / "small.bin", www / "large.bin"):  # workers may run as nobody
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.small = (www / "small.bin").read_bytes()
        (self.port,) = free_ports(1)
        site = f"""
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        root {www};
    }}
"""
        http = """
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    default_type application/octet-stream;
"""
        self.nginx = Nginx(self.dir, site, self.port, main="worker_rlimit_nofile 16384;", http=http,
                           worker_connections=8192, error_level="warn")
        register(self.nginx.process)

    def stop(self) -> None:
        self.nginx.stop()


class Rendezvous(Deployment):
    """One reverse_websockify server (started at once), its config, and one agent per service.

    ``targets``: service ID -> port of the TCP service its agent dials.
    """

    def __init__(self, settings: Settings, tmp: Path, name: str, targets: dict[str, int]) -> None:
        directory = tmp / name
        directory.mkdir()
        ports = free_ports(len(targets) + 1)
        programs = settings.programs
        super().__init__(tmp=directory, services=dict(zip(targets, ports[1:])), http_port=ports[0],
                         programs=programs, env=programs.env(), extra_config=settings.server_config,
                         options=[f"--log-level={settings.log_level}"] if settings.log_level else [])
        self.name = name
        self.targets = targets
        self.agent_of: dict[str, Process] = {}
        register(self.start_server(timeout=30, name=f"{name} server"))

    @property
    def server_process(self) -> Process:
        assert self.server is not None
        return self.server

    def start_agent_for(self, sid: str, *extra: str, url: str | None = None) -> Process:
        """The agent for ``sid`` (options ``extra``, dialing ``url`` instead of the server's ws:// one);
        not waited for (the scenarios wait for many at once)."""
        agent = register(self.start_agent(sid, self.targets[sid], *extra, url=url, wait=False,
                                          name=f"{self.name} agent {sid}"))
        self.agent_of[sid] = agent
        return agent

    def logs(self) -> list[Process]:
        return [self.server_process, *self.agents]


class StalledDownload:
    """curl fetching the large file; once bytes arrive it is SIGSTOPped: its socket stops being read."""

    def __init__(self, port: int, tmp: Path) -> None:
        self.file = tmp / f"stalled-{port}.bin"
        self.proc = start_process("curl (stalled)", ["curl", "-sS", "--max-time", "300", "--limit-rate", "8M",
                                                     "-o", str(self.file), f"http://127.0.0.1:{port}/large.bin"],
                                  tmp / f"curl-{port}.log")
        try:
            wait_for(lambda: self._size() >= 1 << 20 or exited_early(self.proc), 15, "the download to start")
        except (BenchError, WaitTimeout):
            self.close()
            raise
        self.proc.signal(signal.SIGSTOP)
        # Part of the scenario, not a wait for an event: the buffers on the way (curl's socket, the
        # tunnel's credit, nginx's send buffer) fill up during this second, so that the measurement
        # that follows runs next to a stream that is really stuck.
        time.sleep(1.0)
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
        self.proc.signal(signal.SIGKILL)
        self.proc.signal(signal.SIGCONT)
        self.proc.stop(5)
        try:
            self.file.unlink()
        except OSError:
            pass


class WssFront:
    """The reference deployment's front: certificates made by the shipped scripts, the shipped nginx.conf
    (TLS, client certificates) proxying to the server at ``upstream``; agents dial :meth:`url`."""

    def __init__(self, tmp: Path, upstream: int) -> None:
        directory = tmp / "wss"
        self.tls = make_server_cert(directory / "tls", "127.0.0.1")
        self.agent_dir = make_client_cert(directory / "agent", self.tls)
        self.nginx = ShippedNginx(directory, self.tls, upstream)
        register(self.nginx.process)

    def url(self, sid: str) -> str:
        return f"wss://127.0.0.1:{self.nginx.https_port}/forward_to_me/{sid}"

    def agent_options(self) -> list[str]:
        return agent_tls_flags(self.agent_dir)

    def stop(self) -> None:
        self.nginx.stop()


LINKEMU = Path(__file__).resolve().parent / "linkemu.py"


class LinkEmulator:
    """bench/linkemu.py in its own process: 127.0.0.1:``port`` → 127.0.0.1:``upstream`` with delay and rate."""

    def __init__(self, tmp: Path, upstream: int, rate_mbit: float, rtt_ms: float) -> None:
        (self.port,) = free_ports(1)
        self.rate_mbit, self.rtt_ms = rate_mbit, rtt_ms
        self.process = start_process(
            f"link emulator {rate_mbit:g} Mbit/s {rtt_ms:g} ms → {upstream}",
            [sys.executable, str(LINKEMU), "--listen", str(self.port), "--upstream", str(upstream),
             "--rate-mbit", str(rate_mbit), "--rtt-ms", str(rtt_ms)],
            tmp / f"linkemu-{self.port}.log")
        wait_for(lambda: listening(self.port) or exited_early(self.process), 10, "the link emulator to listen")

    def cpu_seconds(self) -> float:
        return probes.tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.stop(5)


class RedisServer:
    """redis-server on a free loopback port, no persistence."""

    def __init__(self, tmp: Path) -> None:
        (self.port,) = free_ports(1)
        self.process = start_process("redis-server", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                                      "--save", "", "--appendonly", "no", "--daemonize", "no",
                                                      "--dir", str(tmp)], tmp / "redis-server.log")
        wait_for(lambda: listening(self.port) or exited_early(self.process), 10, "redis-server to listen")

    def stop(self) -> None:
        self.process.stop(5)


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program (initdb, postgres, pg_isready): Debian keeps them in /usr/lib/postgresql/<ver>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    return found[-1] if found else shutil.which(name)


class Postgres:
    """A throwaway PostgreSQL cluster: initdb in ``tmp``, fsync off, on a free loopback port, with the
    pgbench tables at scale 1. PostgreSQL refuses to run as root: as root it runs as the user postgres."""

    def __init__(self, tmp: Path) -> None:
        directory = tmp / "postgres"
        directory.mkdir()
        as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise BenchError("PostgreSQL does not run as root and there is no user 'postgres' "
                                 "(apt-get install postgresql makes it)") from None
            tmp.chmod(0o755)
            os.chown(directory, user.pw_uid, user.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        data = directory / "data"
        run_tool(as_user + [str(postgres_bin("initdb")), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
                            "-E", "UTF8", "--locale=C"], 120, "initdb")
        (self.port,) = free_ports(1)
        # runuser passes SIGTERM on: postgres then shuts down (smart mode; the clients are gone by then)
        self.process = start_process("postgres", as_user + [
            str(postgres_bin("postgres")), "-D", str(data), "-p", str(self.port), "-k", str(directory),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=100"], directory / "postgres.log")
        wait_for(lambda: exited_early(self.process) or subprocess.run(
            [str(postgres_bin("pg_isready")), "-q", "-h", "127.0.0.1", "-p", str(self.port)], timeout=10).returncode == 0,
            30, "postgres to accept connections")
        run_tool(["pgbench", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-i", "-s", "1", "-q",
                  "postgres"], 120, "pgbench -i")

    def stop(self) -> None:
        self.process.stop(10)
