"""Keepalive for a fleet: one timer for every agent's WebSocket, and pings only for the silent ones.

websockets' keepalive is a task per connection that pings every ``ping_interval``
whatever else arrives: at 8,000 agents 1,000 pings a second, answered on top of
the agents' own pings, a quarter of the server's core with nothing relayed.
Any frame from an agent proves its link alive, and agents ping every
``ping_interval`` themselves; so the server pings an agent only after
``ping_interval`` of silence, and drops the link (1011 "keepalive ping timeout",
as websockets would) when ``ping_timeout`` more pass without a pong. A dead link
is noticed as before: within interval + timeout + one tick (8 + 10 + 1 s) of the
last frame heard.
"""

from __future__ import annotations

import asyncio
import time

from .pacing import paced
from .wsconnection import ConnectionClosed, DirectServerConnection, fail_keepalive

TICK_SECONDS = 1.0


class FleetKeepalive:
    def __init__(self, ping_interval: float, ping_timeout: float) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._links: set[DirectServerConnection] = set()
        self._probing: set[DirectServerConnection] = set()
        self._task: asyncio.Task[None] | None = None

    def watch(self, connection: DirectServerConnection) -> None:
        self._links.add(connection)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def forget(self, connection: DirectServerConnection) -> None:
        self._links.discard(connection)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        tick = min(TICK_SECONDS, self.ping_interval / 2)
        while True:
            await asyncio.sleep(tick)
            silent_since = time.monotonic() - self.ping_interval
            async for connection in paced(self._links):
                if connection.last_heard <= silent_since and connection not in self._probing \
                        and connection in self._links:
                    self._probing.add(connection)
                    asyncio.ensure_future(self._probe(connection))

    async def _probe(self, connection: DirectServerConnection) -> None:
        try:
            pong = await connection.ping()
            await asyncio.wait_for(pong, self.ping_timeout)
        except asyncio.TimeoutError:
            await fail_keepalive(connection)
        except ConnectionClosed:
            pass
        finally:
            self._probing.discard(connection)
