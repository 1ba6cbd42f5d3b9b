"""The event loop's lag: what is recorded, when a long hold is logged, and the timer on a real loop."""

from __future__ import annotations

import asyncio
import time

from reverse_websockify.looplag import BUCKETS, REPEAT_SECONDS, WARN_SECONDS, LoopLag, LoopLagWatch


def bucket_of(lag: LoopLag, seconds: float) -> int:
    """The histogram count of the bucket ``seconds`` falls in."""
    return lag.histogram.counts[sum(1 for bound in BUCKETS if bound < seconds)]


def test_every_sample_is_kept_and_the_longest_remembered() -> None:
    lag = LoopLag()
    for seconds in (0.0004, 0.003, 0.002, -0.0007):  # a timer may fire a little early: counted as on time
        assert lag.observe(seconds, now=0.0) == 0
    assert sum(lag.histogram.counts) == 4
    assert bucket_of(lag, 0.0) == 2 and bucket_of(lag, 0.003) == 1 and bucket_of(lag, 0.002) == 1
    assert lag.longest == 0.003
    assert abs(lag.histogram.total - 0.0054) < 1e-9


def test_a_long_hold_is_logged_at_once_then_at_most_once_a_minute_with_the_ones_in_between() -> None:
    lag = LoopLag()
    assert lag.observe(WARN_SECONDS, now=100.0) == 1
    assert lag.observe(2 * WARN_SECONDS, now=110.0) == 0  # within the minute: counted, not logged
    assert lag.observe(WARN_SECONDS / 2, now=120.0) == 0  # not long: never counted
    assert lag.observe(3 * WARN_SECONDS, now=100.0 + REPEAT_SECONDS) == 2  # the one held back and this one
    assert lag.observe(WARN_SECONDS, now=100.0 + REPEAT_SECONDS + 1) == 0
    assert lag.longest == 3 * WARN_SECONDS


def test_the_timer_sees_a_callback_that_holds_the_loop() -> None:
    async def run() -> LoopLag:
        lag = LoopLag()
        watch = LoopLagWatch(lag)
        watch.start()
        await asyncio.sleep(0.1)  # on time: a few samples of about nothing
        asyncio.get_running_loop().call_soon(time.sleep, 0.06)  # a callback that holds every tunnel
        await asyncio.sleep(0.1)
        watch.stop()
        await asyncio.sleep(0.03)  # stopped: no more samples
        return lag

    lag = asyncio.run(run())
    samples = sum(lag.histogram.counts)
    assert 5 <= samples <= 25  # ~20 in 0.2 s less the hold; none after stop()
    assert 0.04 <= lag.longest < 1.0  # the hold, less the part of the period that had passed when it began
    assert sum(lag.histogram.counts[BUCKETS.index(0.05):]) >= 1  # a sample met the hold
