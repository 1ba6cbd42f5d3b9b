"""Real processes on loopback for the integration and end-to-end tests.

The programs under test are the package's CLIs by default, or the built
single-file executables when RW_BIN_DIR names the folder holding them (the
"test what ships" stage of .ci/run). Nothing here mocks a socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BIN_DIR = os.environ.get("RW_BIN_DIR")
SERVER_NAME = "reverse_websockify_server"
AGENT_NAME = "reverse_websockify_agent_service_side"


EVENT_LOOP = os.environ.get("RW_EVENT_LOOP")  # "asyncio" or "uvloop": run both programs on that loop


def command(name: str) -> list[str]:
    if BIN_DIR:
        args = [str(Path(BIN_DIR).resolve() / name)]
    else:
        module = "server" if name == SERVER_NAME else "agent"
        args = [sys.executable, "-m", f"reverse_websockify.cli.{module}"]
    if EVENT_LOOP:
        args.append(f"--event-loop={EVENT_LOOP}")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Process:
    """A program under test, its output captured to a file we can read at any time."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0) -> str:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in {self.log_path.name}:\n{self.log()[-3000:]}")
        return self.log()

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            if BIN_DIR and sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
                # A single-file executable is a launcher with the program as its child; these
                # signals cannot be forwarded by the launcher, so they go to the child as well.
                for child in self.children():
                    try:
                        os.kill(child, sig)
                    except ProcessLookupError:
                        pass
            self.proc.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def rss_kib(self, field_name: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field_name} for pid {self.pid}")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


@dataclass
class Deployment:
    """A server with its config, plus agents attached to it."""

    tmp: Path
    services: dict[str, int]  # service ID -> user-facing port
    http_port: int
    extra_config: str = ""
    server: Process | None = None
    agents: list[Process] = field(default_factory=list)
    client_ssl: ssl.SSLContext | None = None  # set when the server terminates TLS itself ([tls])

    @property
    def base_url(self) -> str:
        return f"{'https' if self.client_ssl else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.toml"

    def write_config(self) -> None:
        lines = [f'http_server_endpoint = "127.0.0.1:{self.http_port}"', self.extra_config]
        for sid, port in self.services.items():
            lines += [f"[remote_service.{sid}]", f'nickname = "nick-{sid}"', f'local_listen_endpoint = "127.0.0.1:{port}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    def start_server(self, *extra: str) -> Process:
        if not self.config_path.exists():
            self.write_config()
        self.server = Process(command(SERVER_NAME) + [str(self.config_path), *extra],
                              self.tmp / f"server-{time.monotonic_ns()}.log")
        wait_for(self._http_up, 15, f"server HTTP on {self.http_port}: {self.server.log()[-2000:]}")
        return self.server

    def _http_up(self) -> bool:
        if self.server is not None and self.server.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.server.proc.returncode}: {self.server.log()}")
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1, context=self.client_ssl):
                return True
        except OSError:
            return False

    def url(self, sid: str) -> str:
        return f"ws://127.0.0.1:{self.http_port}/forward_to_me/{sid}"

    def start_agent(self, sid: str, service_port: int, *extra: str, wait: bool = True, url: str | None = None,
                    env: dict[str, str] | None = None) -> Process:
        agent = Process(
            command(AGENT_NAME) + [f"--service=127.0.0.1:{service_port}", f"--reverse-websockify={url or self.url(sid)}",
                                   *extra],
            self.tmp / f"agent-{sid}-{time.monotonic_ns()}.log",
            env=env,
        )
        self.agents.append(agent)
        if wait:
            wait_for(lambda: self.status()[sid]["connected"] and self.status()[sid]["agent_address"] is not None,
                     15, f"agent for {sid} to attach: {agent.log()[-2000:]}")
        return agent

    def status(self, accept: str = "application/json") -> dict:
        request = urllib.request.Request(f"{self.base_url}/", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=5, context=self.client_ssl) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        if self.server is not None:
            self.server.stop()


class EchoServer:
    """A real TCP echo service in a thread: echoes until EOF, then half-closes back."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    data = conn.recv(1 << 18)
                    if not data:
                        conn.shutdown(socket.SHUT_WR)
                        return
                    conn.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def transfer(port: int, payload: bytes, *, chunk: int = 1 << 18, timeout: float = 60.0) -> bytes:
    """Send payload to an echo through the tunnel, half-close, and return all that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        received = bytearray()
        error: list[BaseException] = []

        def reader() -> None:
            try:
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        return
                    received.extend(data)
            except BaseException as exc:  # noqa: BLE001 — reported to the test below
                error.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        view = memoryview(payload)
        for i in range(0, len(payload), chunk):
            s.sendall(view[i : i + chunk])
        s.shutdown(socket.SHUT_WR)
        thread.join(timeout)
        assert not thread.is_alive(), "reply did not finish in time"
        if error:
            raise error[0]
        return bytes(received)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
