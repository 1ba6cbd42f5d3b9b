"""File descriptors: raise the soft limit at start, and say clearly when they run out.

Every user connection costs the server one descriptor (and the agent one).
Running out is silent on uvloop (libuv accepts and drops the connection) and
floods the log on plain asyncio (a traceback per accept attempt), so the
server watches its own usage and logs one clear line, at most every
REPEAT_SECONDS, naming the limit and how to raise it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Any

from .pacing import in_worker_thread

log = logging.getLogger("reverse_websockify.fdlimit")

CHECK_SECONDS = 1.0
REPEAT_SECONDS = 10.0
HIGH_WATER = 0.9  # warn above this fraction of the soft limit


def raise_soft_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (as Go's runtime does); return (soft, hard)."""
    try:
        import resource
    except ImportError:  # pragma: no cover (Windows)
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


def _fd_dir() -> str | None:
    for path in ("/proc/self/fd", "/dev/fd"):
        if os.path.isdir(path):
            return path
    return None


class FdWatch:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._last_warning = -REPEAT_SECONDS
        self._dir = _fd_dir()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE):
                self.warn(f"accept failed: {os.strerror(error.errno)}")
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)
        if self._dir is not None and self.limit > 0:
            self._task = loop.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning < REPEAT_SECONDS:
            return
        self._last_warning = now
        used = self.in_use()
        log.warning("out of file descriptors (%s of %d in use, %s): new user connections are refused; raise "
                    "the limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -n)",
                    used if used >= 0 else "?", self.limit, what)

    def in_use(self) -> int:
        if self._dir is None:
            return -1
        try:
            return len(os.listdir(self._dir))
        except OSError as error:
            # Listing needs a descriptor of its own: failing for lack of one is the answer.
            return self.limit if error.errno in (errno.EMFILE, errno.ENFILE) else -1

    async def _watch(self) -> None:
        pause = CHECK_SECONDS
        while True:
            await asyncio.sleep(pause)
            started = time.perf_counter()
            # Listing 16,000 descriptors takes milliseconds: in a worker thread (it held every tunnel 5-15 ms
            # at a time), and less often, so that it costs ~0.1 % of a core.
            used = await in_worker_thread(self.in_use)
            pause = max(CHECK_SECONDS, 1000 * (time.perf_counter() - started))
            if used >= HIGH_WATER * self.limit:
                self.warn("the limit is nearly reached" if used < self.limit - 1 else "the limit is reached")
