#!/usr/bin/env python3
"""Smoke-test built executables: --version, then bytes through server + agent to an echo service.

Standard library only, so it runs on any release runner (Linux, macOS, Windows) without the
package installed:

    python scripts/smoke_binaries.py --bin-dir dist
    python scripts/smoke_binaries.py --bin-dir dist --docker nginx:latest      # run them inside an image
    python scripts/smoke_binaries.py --bin-dir dist --docker rockylinux:8 --docker debian:11

With --docker IMAGE (Linux hosts) each binary runs as the entry point of a fresh container of that
stock image (host network, the binaries mounted read-only), so the image needs nothing but a libc
and zlib; this script stays on the host and drives the echo service and the user connection.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

SERVER = "reverse_websockify_server"
AGENT = "reverse_websockify_agent_service_side"
WINDOWS = sys.platform == "win32"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Echo(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    @staticmethod
    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)


def transfer(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        got = bytearray()
        reader = threading.Thread(target=lambda: [got.extend(d) for d in iter(lambda: s.recv(1 << 16), b"")])
        reader.start()
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        reader.join(60)
        return bytes(got)


class Runner:
    """Starts a binary directly, or as the entry point of a container of a stock image."""

    def __init__(self, bin_dir: Path, work: Path, image: str | None) -> None:
        self.bin_dir, self.work, self.image = bin_dir, work, image

    def exe(self, name: str) -> str:
        path = self.bin_dir / (name + (".exe" if WINDOWS else ""))
        if not path.is_file():
            raise SystemExit(f"missing {path}")
        return str(path)

    def command(self, name: str, args: list[str], container: str) -> list[str]:
        if not self.image:
            return [self.exe(name), *args]
        return ["docker", "run", "--rm", "--name", container, "--network", "host", "--user", f"{os.getuid()}",
                "-v", f"{self.bin_dir}:{self.bin_dir}:ro", "-v", f"{self.work}:{self.work}", "-w", str(self.work),
                "--entrypoint", self.exe(name), self.image, *args]

    def start(self, name: str, args: list[str]) -> tuple[subprocess.Popen, str, Path]:
        container = f"rw-smoke-{uuid.uuid4().hex[:10]}"
        log = self.work / f"{name}-{container}.log"
        proc = subprocess.Popen(self.command(name, args, container), stdout=open(log, "wb"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return proc, container, log

    def stop(self, proc: subprocess.Popen, container: str) -> int | None:
        """SIGTERM (docker kill --signal TERM to the container's PID 1); None where exit codes mean nothing."""
        if proc.poll() is None:
            if self.image:
                subprocess.run(["docker", "kill", "--signal", "TERM", container], capture_output=True)
            else:
                proc.terminate()  # SIGTERM on POSIX, TerminateProcess on Windows
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            if self.image:
                subprocess.run(["docker", "kill", container], capture_output=True)
            proc.wait(10)
            raise AssertionError("did not exit within 15 s of SIGTERM")
        return None if WINDOWS else code


def wait_for(what: str, condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def status(http: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{http}/", headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def smoke(bin_dir: Path, image: str | None) -> None:
    where = f"in {image}" if image else "on this host"
    work = Path(tempfile.mkdtemp(prefix="rw-smoke-"))
    os.chmod(work, 0o777)
    runner = Runner(bin_dir, work, image)
    try:
        for name in (SERVER, AGENT):
            proc, _, log = runner.start(name, ["--version"])
            code = proc.wait(60)
            text = log.read_text(errors="replace").strip()
            assert code == 0 and text.startswith(name + " ") and "Python 3." in text, f"{name} --version: {code} {text}"
            print(f"ok   {where}: {text}")

        http, user_port = free_port(), free_port()
        config = work / "config.toml"
        config.write_text(f'http_server_endpoint = "127.0.0.1:{http}"\n[remote_service.SMOKE]\n'
                          f'nickname = "smoke"\nlocal_listen_endpoint = "127.0.0.1:{user_port}"\n')
        echo = Echo()
        echo.start()
        server, server_name, server_log = runner.start(SERVER, [str(config)])
        agent = agent_name = agent_log = None
        try:
            wait_for(f"the server's HTTP port {where}", lambda: server.poll() is None and status(http))
            agent, agent_name, agent_log = runner.start(
                AGENT, [f"--service=127.0.0.1:{echo.port}", f"--reverse-websockify=ws://127.0.0.1:{http}/forward_to_me/SMOKE"])
            wait_for(f"the agent to attach {where}", lambda: status(http)["SMOKE"]["connected"])
            for size in (1, 4 * 1024 * 1024 + 7):
                payload = os.urandom(size)
                back = transfer(user_port, payload)
                assert hashlib.sha256(back).digest() == hashlib.sha256(payload).digest(), \
                    f"relay of {size} bytes: got {len(back)} bytes back, hashes differ"
            print(f"ok   {where}: relayed 1 B and 4 MiB both ways, SHA-256 equal")
            for name, proc, container in ((AGENT, agent, agent_name), (SERVER, server, server_name)):
                code = runner.stop(proc, container)
                assert code in (0, None), f"{name} exited with {code} after SIGTERM"
            print(f"ok   {where}: both exit {'' if WINDOWS else '0 '}on SIGTERM")
        except BaseException:
            for log in (server_log, agent_log):
                if log is not None and log.exists():
                    print(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
            raise
        finally:
            for proc, container in ((agent, agent_name), (server, server_name)):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    if image:
                        subprocess.run(["docker", "kill", container], capture_output=True)
            echo.sock.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, default=Path("dist"))
    parser.add_argument("--docker", action="append", default=[], metavar="IMAGE",
                        help="also run the binaries inside a container of IMAGE (repeatable)")
    parser.add_argument("--no-host", action="store_true", help="only the --docker runs")
    args = parser.parse_args()
    bin_dir = args.bin_dir.resolve()
    targets = ([] if args.no_host else [None]) + args.docker
    for image in targets:
        if image:
            subprocess.run(["docker", "pull", "--quiet", image], check=True)
        smoke(bin_dir, image)
    print(f"smoke: {len(targets)} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
