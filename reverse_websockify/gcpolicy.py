"""The garbage collector and a fleet of long-lived tunnels.

CPython's cycle collector walks every tracked object in a full (generation 2)
collection: at 8,000 agents that is 1.3 million objects and about a second in
which no tunnel moves a byte. A full collection comes whenever the objects
promoted since the last one reach a quarter of the old generation: after a
couple of thousand reconnects, a reload, a burst of user connections.

So after each full collection its survivors (the fleet's tunnels, the config:
what lives for hours) are frozen, and later collections walk only what is newer
(``gc.freeze``). A frozen object that later becomes cyclic garbage (a tunnel
that ended) is not collected while frozen, so every ``THAW_SECONDS`` the freeze
is lifted and the next full collection takes everything in: one long pause an
hour instead of one every few thousand reconnects, and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

THAW_SECONDS = 3600.0


class FreezeAfterFullCollections:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thaw: asyncio.TimerHandle | None = None

    def start(self) -> None:
        gc.callbacks.append(self._collected)
        self._thaw = self.loop.call_later(THAW_SECONDS, self._thaw_now)

    def stop(self) -> None:
        """At shutdown: no more collections at all. Every tunnel ending at once would set off full
        collections of the whole fleet, seconds each, while the process is about to exit anyway."""
        if self._collected in gc.callbacks:
            gc.callbacks.remove(self._collected)
        if self._thaw is not None:
            self._thaw.cancel()
        gc.disable()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:
            self.loop.call_soon_threadsafe(gc.freeze)  # not inside the collection (it may run in a worker thread)

    def _thaw_now(self) -> None:
        gc.unfreeze()
        self._thaw = self.loop.call_later(THAW_SECONDS, self._thaw_now)
