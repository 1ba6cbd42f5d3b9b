"""Fleet-wide work and the garbage collector: off while the work runs, back on once its objects are gone."""

from __future__ import annotations

import asyncio
import gc

from reverse_websockify import pacing


def test_the_collector_resumes_a_loop_turn_after_the_work_once_its_objects_are_freed() -> None:
    async def page() -> int:
        with pacing.collector_paused():
            entries = [{"service": i} for i in range(50_000)]  # what a status page of a fleet builds
            await asyncio.sleep(0)
            assert not gc.isenabled()
        assert not gc.isenabled()  # the caller still holds ``entries`` here: a collection now would walk them
        return len(entries)

    async def run() -> tuple[int, bool, int]:
        shown = await page()
        await asyncio.sleep(0)
        return shown, gc.isenabled(), gc.get_count()[0]

    assert gc.isenabled()
    shown, enabled, young = asyncio.run(run())
    assert shown == 50_000 and enabled
    assert young < 5_000  # the 50,000 entries were freed before the collector came back, not left for it


def test_overlapping_work_keeps_the_collector_off_until_the_last_ends() -> None:
    async def run() -> list[bool]:
        seen = []
        with pacing.collector_paused():
            with pacing.collector_paused():
                pass
            await asyncio.sleep(0)
            seen.append(gc.isenabled())  # the inner one ended: still off
        await asyncio.sleep(0)
        seen.append(gc.isenabled())
        return seen

    assert asyncio.run(run()) == [False, True]


def test_without_an_event_loop_the_collector_comes_back_at_once() -> None:
    with pacing.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
