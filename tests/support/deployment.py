"""A reverse_websockify server with its config, and the agents attached to it, on loopback."""

from __future__ import annotations

import json
import signal
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import Process, ProcessDied
from tests.support.programs import AGENT_NAME, FROM_ENVIRONMENT, SERVER_NAME, Programs
from tests.support.waiting import wait_for


@dataclass
class Deployment:
    """A server (one ``[remote_service.<ID>]`` per entry of ``services``) plus agents.

    ``options`` go to both programs at every start (``--log-format=json``, ``--log-level=...``).
    """

    tmp: Path
    services: dict[str, int]  # service ID -> user-facing port
    http_port: int
    extra_config: str = ""
    programs: Programs = FROM_ENVIRONMENT
    options: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    server: Process | None = None
    agents: list[Process] = field(default_factory=list)
    client_ssl: ssl.SSLContext | None = None  # set when the server terminates TLS itself ([tls])
    service_config: dict[str, str] = field(default_factory=dict)  # service ID -> more lines in its table

    @property
    def base_url(self) -> str:
        return f"{'https' if self.client_ssl else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.toml"

    def write_config(self) -> None:
        lines = [f'http_server_endpoint = "127.0.0.1:{self.http_port}"', self.extra_config]
        for sid, port in self.services.items():
            lines += [f"[remote_service.{sid}]", f'nickname = "nick-{sid}"', f'local_listen_endpoint = "127.0.0.1:{port}"',
                      self.service_config.get(sid, "")]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start_server(self, *extra: str, timeout: float = 15.0, name: str = "server") -> Process:
        """Start the server and wait until it answers /healthz (ProcessDied if it exits instead)."""
        if not self.config_path.exists():
            self.write_config()
        self.server = Process(self.programs.command(SERVER_NAME) + [str(self.config_path), *self.options, *extra],
                              self.tmp / f"server-{time.monotonic_ns()}.log", name=name, env=self.env,
                              launcher=self.programs.binaries)
        wait_for(self._http_up, timeout, f"server HTTP on {self.http_port}: {self.server.log()[-2000:]}")
        return self.server

    def _http_up(self) -> bool:
        if self.server is not None and not self.server.alive():
            raise ProcessDied(f"server exited with {self.server.proc.returncode}: {self.server.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1, context=self.client_ssl):
                return True
        except OSError:
            return False

    def url(self, sid: str) -> str:
        return f"ws://127.0.0.1:{self.http_port}/forward_to_me/{sid}"

    def start_agent(self, sid: str, service_port: int, *extra: str, wait: bool = True, url: str | None = None,
                    env: dict[str, str] | None = None, name: str | None = None) -> Process:
        """Start an agent for ``sid`` relaying to 127.0.0.1:service_port; by default wait until it is attached."""
        agent = Process(
            self.programs.command(AGENT_NAME) + [f"--service=127.0.0.1:{service_port}",
                                                 f"--reverse-websockify={url or self.url(sid)}", *self.options, *extra],
            self.tmp / f"agent-{sid}-{time.monotonic_ns()}.log",
            name=name or f"agent {sid}", env=env or self.env, launcher=self.programs.binaries,
        )
        self.agents.append(agent)
        if wait:
            wait_for(lambda: self.status()[sid]["connected"] and self.status()[sid]["agent_address"] is not None,
                     15, f"agent for {sid} to attach: {agent.log()[-2000:]}")
        return agent

    def status(self, accept: str = "application/json") -> dict[str, Any]:
        request = urllib.request.Request(f"{self.base_url}/", headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10, context=self.client_ssl) as response:
            return json.loads(response.read())

    def attached(self) -> set[str]:
        """The service IDs whose agent is connected now."""
        return {sid for sid, entry in self.status().items() if entry.get("connected")}

    def check_alive(self) -> None:
        """ProcessDied if the server or any agent has exited."""
        for process in [self.server, *self.agents]:
            if process is not None:
                process.check_alive()

    def wait_attached(self, sids: list[str], timeout: float) -> None:
        """Wait until every one of ``sids`` has its agent attached; ProcessDied as soon as one dies."""
        def all_there() -> bool:
            self.check_alive()
            return set(sids) <= self.attached()

        wait_for(all_there, timeout, f"agents {', '.join(sids[:5])}{'...' if len(sids) > 5 else ''} to attach", 0.2)

    def stop(self) -> None:
        """Every agent gets SIGTERM at once (200 agents stop in parallel), then the server."""
        for agent in self.agents:
            agent.signal(signal.SIGTERM)
        for agent in self.agents:
            agent.stop()
        if self.server is not None:
            self.server.stop()
