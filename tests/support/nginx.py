"""An nginx of our own on loopback: a prefix folder, a main config around a site, in the foreground.

Two sites use it: the shipped packaging/rendezvous/nginx.conf (TLS, client certificates, the
reference deployment) for the tests, and a static-file server for the benchmark.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.support.ports import accepts_connections, free_ports
from tests.support.processes import Process, ProcessDied
from tests.support.programs import REPO
from tests.support.waiting import wait_for

SHIPPED_SITE = REPO / "packaging" / "rendezvous" / "nginx.conf"


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


class Nginx:
    """nginx -p PREFIX with ``site`` included in its http block; started, then waited for on ``port``.

    ``main`` and ``http`` are extra directives for the main and http contexts.
    """

    def __init__(self, prefix: Path, site: str, port: int, *, main: str = "", http: str = "",
                 worker_connections: int = 1024, error_level: str = "info") -> None:
        self.dir = prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        temp = self.dir / "tmp"
        temp.mkdir(exist_ok=True)
        (self.dir / "site.conf").write_text(site)
        temps = "\n".join(f"    {kind}_temp_path {temp}/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                             "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
worker_processes 1;
{main}
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log {error_level};
events {{ worker_connections {worker_connections}; }}
http {{
{http}
{temps}
    include {self.dir}/site.conf;
}}
""")
        self.args = [nginx_binary(), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                     "-e", str(self.dir / "error.log")]
        self.port = port
        self.process = Process(self.args, self.dir / "nginx.out", name="nginx", launcher=False)
        wait_for(self._up, 10, "nginx to listen")

    def test_config(self) -> subprocess.CompletedProcess[str]:
        """nginx -t on this configuration."""
        return subprocess.run(self.args + ["-t"], capture_output=True, text=True, timeout=60)

    def command(self, *args: str) -> None:
        """``nginx -p ... -c ... <args>``, e.g. ``-s reload``; AssertionError with nginx's words if it fails."""
        done = subprocess.run(self.args + list(args), capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"nginx {' '.join(args)}: {done.stdout}{done.stderr}"

    def _up(self) -> bool:
        if not self.process.alive():
            raise ProcessDied(f"nginx exited: {self.process.log()}{self.error_log()}")
        return accepts_connections(self.port)

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        self.process.stop()


class ShippedNginx(Nginx):
    """The shipped nginx.conf (or ``site_conf``), with /tls/ pointed at test certificates and free ports."""

    def __init__(self, tmp: Path, tls_dir: Path, upstream_port: int, site_conf: Path | None = None) -> None:
        self.https_port, self.http_port = free_ports(2)
        site = (site_conf or SHIPPED_SITE).read_text()
        site = site.replace("/tls/", f"{tls_dir}/")
        site = re.sub(r"listen 443 ssl default_server;", f"listen 127.0.0.1:{self.https_port} ssl default_server;",
                      site)
        site = re.sub(r"listen 80;", f"listen 127.0.0.1:{self.http_port};", site)
        site = site.replace("127.0.0.1:39000", f"127.0.0.1:{upstream_port}")
        super().__init__(tmp / "nginx", site, self.https_port, main="user root;",
                         http=f"    access_log {tmp / 'nginx'}/access.log;")
