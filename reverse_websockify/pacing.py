"""Long loops over the whole fleet, taken in slices so that the event loop keeps relaying in between.

A loop over 8,000 services that does a few microseconds each holds every
tunnel for tens of milliseconds; giving the loop a turn whenever ``HOLD_SECONDS``
have passed keeps each hold to about that, whatever one item costs.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterable, TypeVar

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
