"""Debian's tinyproxy as the corporate HTTP CONNECT proxy an agent must get through."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.support.ports import accepts_connections, free_port
from tests.support.waiting import wait_for


class Tinyproxy:
    """Debian's tinyproxy as the corporate HTTP CONNECT proxy, on loopback."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "tinyproxy"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.log_path = self.dir / "tinyproxy.log"
        conf = self.dir / "tinyproxy.conf"
        # No ConnectPort line: CONNECT is allowed to any port (our nginx is not on 443).
        conf.write_text(f"""
Port {self.port}
Listen 127.0.0.1
Timeout 600
LogFile "{self.log_path}"
LogLevel Connect
PidFile "{self.dir}/tinyproxy.pid"
MaxClients 100
Allow 127.0.0.1
""")
        binary = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
        self.proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(self._up, 10, "tinyproxy to listen")

    def _up(self) -> bool:
        return accepts_connections(self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
