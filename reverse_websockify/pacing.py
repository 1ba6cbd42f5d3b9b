"""Long loops over the whole fleet, taken so that the event loop keeps relaying meanwhile.

A loop over 8,000 services that does a few microseconds each holds every
tunnel for tens of milliseconds; giving the loop a turn whenever ``HOLD_SECONDS``
have passed keeps each hold to about that, whatever one item costs.

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
import time
from contextlib import contextmanager
from typing import AsyncIterator, Iterable, Iterator, TypeVar

HOLD_SECONDS = 0.002

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
            _we_disabled = False
            gc.enable()
