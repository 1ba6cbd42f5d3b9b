"""What the benchmark measures against: nginx with two files, the rendezvous, a stalled download."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bench.errors import BenchError
from bench.processes import exited_early, register, start_process
from bench.settings import Settings
from tests.support.deployment import Deployment
from tests.support.nginx import Nginx
from tests.support.ports import free_ports
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

    def start_agent_for(self, sid: str) -> Process:
        """The agent for ``sid``; not waited for (the scenarios wait for many at once)."""
        agent = register(self.start_agent(sid, self.targets[sid], wait=False, name=f"{self.name} agent {sid}"))
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
