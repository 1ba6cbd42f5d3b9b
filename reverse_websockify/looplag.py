"""How late the event loop runs a timer: whether anything held every tunnel at once.

All tunnels of a server share one event loop, so anything that holds it (a page
built in one go, a full garbage collection, a reload) delays every user's bytes
by as long. A timer due every ``PERIOD`` fires late by about as long as the loop
was held when it came due. Its lateness, kept in a histogram (like Node's
``monitorEventLoopDelay`` and prom-client's ``nodejs_eventloop_lag_seconds``),
tells an operator whether what they do stalls the relay, and gives the
benchmark its figure for "no hold longer than a few milliseconds". A hold of
``WARN_SECONDS`` or more is also logged, at most once a minute, because a
stall every user felt should not need a dashboard to be noticed.

The rules (what is recorded, when to warn) are in ``LoopLag``, which is pure;
``LoopLagWatch`` only runs the timer. It costs 100 timer callbacks a second.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .latency import LatencyHistogram

log = logging.getLogger(__name__)

PERIOD = 0.01
"""10 ms, prom-client's default: a hold longer than this always meets a timer that is due."""
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: the event loop's own timer granularity is 1 ms; an unbounded stall is +Inf."""
WARN_SECONDS = 0.25
REPEAT_SECONDS = 60.0


class LoopLag:
    """The lateness samples of one event loop, and whether a long hold is to be logged now."""

    __slots__ = ("histogram", "longest", "_warned_at", "_unreported")

    def __init__(self) -> None:
        self.histogram = LatencyHistogram(BUCKETS)
        self.longest = 0.0  # seconds, since start
        self._warned_at = float("-inf")
        self._unreported = 0  # long holds since the last warning

    def observe(self, seconds: float, now: float) -> int:
        """A timer fired ``seconds`` late at ``now``: the number of long holds to log now (0: nothing to say)."""
        seconds = max(seconds, 0.0)  # a timer may fire a little early: the loop's clock has 1 ms steps
        self.histogram.observe(seconds)
        self.longest = max(self.longest, seconds)
        if seconds < WARN_SECONDS:
            return 0
        self._unreported += 1
        if now - self._warned_at < REPEAT_SECONDS:
            return 0
        self._warned_at = now
        holds, self._unreported = self._unreported, 0
        return holds


class LoopLagWatch:
    """Runs ``lag``'s timer on the running loop: a plain callback, no task, every ``PERIOD``."""

    def __init__(self, lag: LoopLag, period: float = PERIOD) -> None:
        self.lag = lag
        self.period = period
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = time.perf_counter() + self.period
        self._handle = loop.call_later(self.period, self._fired, loop)

    def _fired(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.perf_counter()
        late = now - self._due
        holds = self.lag.observe(late, now)
        if holds:
            log.warning("the event loop was held for %.2f s: every tunnel's bytes waited as long "
                        "(%d such hold%s since the last warning)", late, holds, "" if holds == 1 else "s")
        self._schedule(loop)
