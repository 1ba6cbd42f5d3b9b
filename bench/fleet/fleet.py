"""N simulated agents on one event loop, and what is measured about them.

``Fleet.run()`` starts every agent (the first attempts ramp in, at most ``max_handshakes``
handshakes in flight, so the initial attach measures the server's handshake rate rather than
the generator's SYN storm; reconnections are not held back: they follow each agent's own backoff,
as a real fleet's do). ``snapshot()`` says at any moment how many are attached, connecting or
backing off, how long the attach of all N took, every time the count fell below N and how long
it took to be back at N (a server restart's re-attach time), and every failure and disconnection
counted by its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, AsyncIterator

from bench.fleet.agent import ATTACHED, CONNECTING, WAITING, SimAgent
from reverse_websockify.config import AgentConfig
from reverse_websockify.fdlimit import raise_soft_limit

_AGENT = {f.name: f.default for f in fields(AgentConfig)}  # the real agent's defaults, not copies of them

FDS_SPARE = 64  # descriptors the generator needs besides one per agent (event loop, logs, status file)


@dataclass
class FleetOptions:
    agents: int
    server: str = "127.0.0.1:39000"  # HOST:PORT of the server's http_server_endpoint
    id_prefix: str = "fleet"
    ids: list[str] | None = None  # explicit service IDs; default prefix00000...
    token: str | None = None
    ping_interval: float = _AGENT["ping_interval"]
    ping_timeout: float = _AGENT["ping_timeout"]
    open_timeout: float = _AGENT["open_timeout"]  # the whole WebSocket handshake (15 s)
    backoff_initial: float = _AGENT["backoff_initial"]
    backoff_max: float = _AGENT["backoff_max"]
    max_handshakes: int = 256  # first attach only: handshakes in flight at once (0: no limit)

    def service_ids(self) -> list[str]:
        if self.ids is not None:
            return list(self.ids)
        from bench.fleet.config import service_ids

        return service_ids(self.agents, self.id_prefix)


@dataclass
class Outage:
    """The attached count fell below N at ``dropped_at`` and was back at N at ``full_at`` (seconds since start)."""

    dropped_at: float
    lowest: int
    full_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"dropped_at": round(self.dropped_at, 3), "lowest": self.lowest,
                "full_at": None if self.full_at is None else round(self.full_at, 3),
                "seconds": None if self.full_at is None else round(self.full_at - self.dropped_at, 3)}


@dataclass
class Fleet:
    options: FleetOptions
    agents: list[SimAgent] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)  # connection attempts that failed, by reason
    disconnects: Counter[str] = field(default_factory=Counter)  # attached links that ended, by close code and reason
    protocol_errors: Counter[str] = field(default_factory=Counter)
    streams_opened: int = 0
    attached_count: int = 0
    stopping: bool = False
    started: float = 0.0
    all_attached_at: float | None = None  # seconds from start to all N attached, the first time
    outages: list[Outage] = field(default_factory=list)
    fd_limit: int = 0

    def __post_init__(self) -> None:
        host_port = self.options.server
        self.agents = [SimAgent(self, sid, f"ws://{host_port}/forward_to_me/{sid}")
                       for sid in self.options.service_ids()]
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        limit = self.options.max_handshakes
        self._first_attach = asyncio.Semaphore(limit) if limit > 0 else None
        self._full = asyncio.Event()

    # -- the agents tell the fleet -----------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() - self.started

    def attached(self, agent: SimAgent) -> None:
        self.attached_count += 1
        if self.attached_count == len(self.agents):
            at = self.now()
            if self.all_attached_at is None:
                self.all_attached_at = at
            if self.outages and self.outages[-1].full_at is None:
                self.outages[-1].full_at = at
            self._full.set()

    def detached(self, agent: SimAgent, was_attached: bool, why: str) -> None:
        if not was_attached:
            return
        self.disconnects[why] += 1
        if self.attached_count == len(self.agents) and not self.stopping:
            self.outages.append(Outage(self.now(), self.attached_count - 1))
            self._full.clear()
        self.attached_count -= 1
        if self.outages and self.outages[-1].full_at is None:
            self.outages[-1].lowest = min(self.outages[-1].lowest, self.attached_count)

    def failed(self, agent: SimAgent, reason: str) -> None:
        self.failures[reason] += 1

    @contextlib.asynccontextmanager
    async def handshake_slot(self) -> AsyncIterator[None]:
        gate = self._first_attach
        if gate is None or self.all_attached_at is not None:
            yield
            return
        async with gate:
            yield

    async def sleep(self, seconds: float) -> bool:
        """Back off for ``seconds``; True when the fleet is stopping instead."""
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    # -- life ---------------------------------------------------------------------------------

    def check_fd_limit(self) -> int:
        """Raise the soft descriptor limit (as the programs do); ValueError when N agents cannot fit."""
        soft, _hard = raise_soft_limit()
        self.fd_limit = soft
        need = len(self.agents) + FDS_SPARE
        if 0 <= soft < need:
            raise ValueError(f"{len(self.agents)} agents need about {need} file descriptors here; the limit is "
                             f"{soft} (raise it: ulimit -n, LimitNOFILE=)")
        return soft

    def start(self) -> None:
        self.check_fd_limit()
        self.started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(agent.run()) for agent in self.agents]

    async def wait_all_attached(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._full.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 10.0) -> None:
        """Close every WebSocket (1001, as an agent shutting down does) and end every agent."""
        self.stopping = True
        self._stop.set()
        closing = [agent._connection.close(1001, "agent shutting down")
                   for agent in self.agents if agent._connection is not None]
        if closing:
            await asyncio.wait([asyncio.ensure_future(c) for c in closing], timeout=timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what is measured -----------------------------------------------------------------------

    def snapshot(self, stuck_examples: int = 5) -> dict[str, Any]:
        states = Counter(agent.state for agent in self.agents)
        not_attached = [a for a in self.agents if a.state != ATTACHED]
        all_at = self.all_attached_at
        return {
            "t": round(self.now(), 3),
            "started_monotonic": self.started,  # time.monotonic() at start: CLOCK_MONOTONIC, the same in every process
            "agents": len(self.agents),
            "attached": self.attached_count,
            "connecting": states.get(CONNECTING, 0),
            "waiting": states.get(WAITING, 0),
            "all_attached_seconds": None if all_at is None else round(all_at, 3),
            "attach_rate_per_second": None if not all_at else round(len(self.agents) / all_at, 1),
            "attempts": sum(a.attempts for a in self.agents),
            "attaches": sum(a.attaches for a in self.agents),
            "failures": dict(self.failures.most_common()),
            "disconnects": dict(self.disconnects.most_common()),
            "protocol_errors": dict(self.protocol_errors),
            "outages": [o.to_json() for o in self.outages],
            "streams_opened": self.streams_opened,
            "not_attached": [{"id": a.service_id, "state": a.state, "attempts": a.attempts,
                              "last_failure": a.last_failure, "last_close": a.last_close}
                             for a in not_attached[:stuck_examples]],
            "fd_limit": self.fd_limit,
        }
