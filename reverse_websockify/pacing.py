"""Long loops over the whole fleet, taken so that the event loop keeps relaying meanwhile.

A loop over 8,000 services that does a few microseconds each holds every
tunnel for tens of milliseconds; giving the loop a turn whenever ``HOLD_SECONDS``
have passed keeps each hold to about that, whatever one item costs.

Work that cannot be sliced (parsing a file, formatting megabytes) runs in a
worker thread. The interpreter lets a thread keep its lock for its switch
interval (5 ms) after another asks for it, and the event loop asks again after
every wait for I/O: with a thread busy, each loop turn cost up to 5 ms and a
busy relay fell hundreds of milliseconds behind. ``in_worker_thread`` shortens
the interval to 0.5 ms while such a thread runs.

The other stall is the garbage collector's. Such a loop builds a few hundred
thousand objects that live across many loop turns, so the collector promotes
them to its oldest generation, which then fills up and gets a full collection:
every object of every tunnel (1.3 million at 8,000 agents) walked in one go,
about a second. ``collector_paused`` keeps the collector off while such work is
under way; its objects are freed by reference counting when it is done, so they
are never promoted and trigger nothing.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from contextlib import contextmanager
from typing import AsyncIterator, Callable, Iterable, Iterator, TypeVar

HOLD_SECONDS = 0.0005
"""0.5 ms, not 2: a page read every second at 8,000 services holds the loop ~30 ms in all, so about 3 %
of requests met a hold, and with 2 ms holds those were the p99 (wrk through one agent, interleaved:
p99 while the status page loads 23.6 / 18.0 ms -> 12.9 / 11.3 ms). A loop turn between holds costs
microseconds."""
WORKER_SWITCH_SECONDS = 0.0005

T = TypeVar("T")


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """The items of a snapshot of ``items`` (a list is taken first, so the source may change meanwhile)."""
    clock = time.perf_counter
    until = clock() + HOLD_SECONDS
    for item in list(items):
        if clock() > until:
            await asyncio.sleep(0)
            until = clock() + HOLD_SECONDS
        yield item


_paused = 0  # how many pieces of fleet-wide work are under way (they overlap: a scrape during a page load)
_we_disabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """The collector off while fleet-wide work is under way, and back on a loop turn after it ended.

    Not at once: the work's objects (8,000 status entries, say) are still referenced by the caller's
    frame when this block exits, and a collection that came then walked them all and promoted them
    (a young-generation collection of 5-12 ms after every status page at 8,000 agents, measured).
    """
    global _paused, _we_disabled
    if _paused == 0 and gc.isenabled():
        gc.disable()
        _we_disabled = True
    _paused += 1
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0 and _we_disabled:
            try:
                asyncio.get_running_loop().call_soon(_resume_collector)
            except RuntimeError:  # no event loop: nothing outlives the caller's next statement
                _resume_collector()


def _resume_collector() -> None:
    global _we_disabled
    if _paused == 0 and _we_disabled:  # not paused again meanwhile
        _we_disabled = False
        gc.enable()


_workers = 0
_switch_interval = 0.005


async def in_worker_thread(work: Callable[[], T]) -> T:
    global _workers, _switch_interval
    if _workers == 0:
        _switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(WORKER_SWITCH_SECONDS)
    _workers += 1
    try:
        return await asyncio.to_thread(work)
    finally:
        _workers -= 1
        if _workers == 0:
            sys.setswitchinterval(_switch_interval)
