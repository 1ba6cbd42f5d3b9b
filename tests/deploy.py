"""The reference deployment, for real: the shipped cert scripts, the shipped nginx.conf, tinyproxy.

Everything listens on 127.0.0.1 ports chosen at run time; the shipped files
are used as they are, with only their paths and ports rewritten.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from tests.harness import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True, **kwargs)  # type: ignore[call-overload]


def make_server_cert(directory: Path, cn: str) -> Path:
    """The seed's openssl command, through packaging/rendezvous/make-server-cert.sh."""
    run(["bash", str(PACKAGING / "rendezvous" / "make-server-cert.sh"), cn, str(directory)])
    return directory


def make_client_cert(directory: Path, ca_dir: Path) -> Path:
    """The seed's client-certificate commands, through packaging/agent/make-client-cert.sh."""
    run(["bash", str(PACKAGING / "agent" / "make-client-cert.sh"), "--ca-cert", str(ca_dir / "server.cert.pem"),
         "--ca-key", str(ca_dir / "server.key.pem"), "--out", str(directory)])
    return directory


class Nginx:
    """The shipped nginx.conf, with /tls/ pointed at test certificates and ports made free."""

    def __init__(self, tmp: Path, tls_dir: Path, upstream_port: int, site_conf: Path | None = None) -> None:
        self.tmp = tmp / "nginx"
        self.tmp.mkdir(exist_ok=True)
        self.https_port = free_port()
        self.http_port = free_port()
        site = (site_conf or PACKAGING / "rendezvous" / "nginx.conf").read_text()
        site = site.replace("/tls/", f"{tls_dir}/")
        site = re.sub(r"listen 443 ssl default_server;", f"listen 127.0.0.1:{self.https_port} ssl default_server;", site)
        site = re.sub(r"listen 80;", f"listen 127.0.0.1:{self.http_port};", site)
        site = site.replace("127.0.0.1:39000", f"127.0.0.1:{upstream_port}")
        (self.tmp / "site.conf").write_text(site)
        (self.tmp / "nginx.conf").write_text(f"""
user root;
worker_processes 1;
daemon on;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {self.tmp}/access.log;
    client_body_temp_path {self.tmp}/body;
    proxy_temp_path {self.tmp}/proxy;
    fastcgi_temp_path {self.tmp}/fastcgi;
    uwsgi_temp_path {self.tmp}/uwsgi;
    scgi_temp_path {self.tmp}/scgi;
    include {self.tmp}/site.conf;
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = nginx
        run([nginx, "-t", "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")])
        run([nginx, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")])
        wait_for(lambda: (self.tmp / "nginx.pid").exists(), 10, "nginx to start")

    def error_log(self) -> str:
        path = self.tmp / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        subprocess.run([self.nginx, "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf"), "-s", "stop"],
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while (self.tmp / "nginx.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


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
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
