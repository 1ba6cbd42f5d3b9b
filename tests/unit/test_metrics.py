"""/metrics for a fleet: per-service series while small, fleet sums otherwise, the same names either way."""

from __future__ import annotations

import asyncio
import time


from reverse_websockify import pacing
from reverse_websockify.latency import BUCKETS
from reverse_websockify.looplag import BUCKETS as LAG_BUCKETS
from reverse_websockify.metrics import LoopLagReading, ServiceReading, render
from reverse_websockify.reasons import StreamFailure
from tests.support.metrics import Sample
from tests.support.metrics import samples as exposition_samples


def reading(sid: str, online: bool, sent: int, dial_failed: int = 0, identity: str | None = None) -> ServiceReading:
    failures = tuple(dial_failed if reason is StreamFailure.DIAL_FAILED else 0 for reason in StreamFailure)
    latency = (1,) + (0,) * len(BUCKETS)
    # every counter its own value, so that a sum taken from the wrong column shows
    return ServiceReading(sid, sent, 2 * sent, 3, failures, 1, 5, online, 2, 7, 11, 13, 17, not online,
                          (("revoked", 1),) if dial_failed else (), identity, latency, 0.004)


def samples(text: bytes) -> dict[Sample, float]:
    return exposition_samples(text.decode())


FLEET = [reading("a", True, 100, identity="bus-a"), reading("b", False, 10, dial_failed=2), reading("c", True, 1)]


def test_per_service_series_name_each_service() -> None:
    m = samples(render(FLEET, per_service=True, services=3)[0])
    assert m[("reverse_websockify_bytes_total", (("direction", "to_service"), ("service", "a")))] == 100
    assert m[("reverse_websockify_streams_failed_total", (("reason", "dial_failed"), ("service", "b")))] == 2
    assert m[("reverse_websockify_agent_identity_info", (("identity", "bus-a"), ("service", "a")))] == 1
    assert m[("reverse_websockify_stream_open_seconds_count", (("service", "c"),))] == 1


def test_fleet_sums_carry_the_same_names_without_the_service_label() -> None:
    per_service = samples(render(FLEET, per_service=True, services=3)[0])
    fleet = samples(render(FLEET, per_service=False, services=3)[0])
    assert all(key != "service" for _, labels in fleet for key, _ in labels)
    summed: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for (name, labels), value in per_service.items():
        if name == "reverse_websockify_agent_identity_info":
            continue  # an identity belongs to one service: not summed
        key = (name, tuple(label for label in labels if label[0] != "service"))
        summed[key] = summed.get(key, 0) + value
    assert fleet == summed
    assert fleet[("reverse_websockify_agent_online", ())] == 2
    assert fleet[("reverse_websockify_services", ())] == 3
    assert fleet[("reverse_websockify_stream_open_seconds_bucket", (("le", "0.005"),))] == 3


def test_the_event_loop_lag_is_a_histogram_and_its_longest_sample() -> None:
    counts = [0] * (len(LAG_BUCKETS) + 1)
    counts[0], counts[LAG_BUCKETS.index(0.5)], counts[-1] = 90, 2, 1  # on time; two ~0.4 s holds; one of 11 s
    m = samples(render(FLEET, per_service=False, services=3, loop_lag=LoopLagReading(tuple(counts), 12.3, 11.0))[0])
    assert m[("reverse_websockify_event_loop_lag_seconds_bucket", (("le", "0.001"),))] == 90
    assert m[("reverse_websockify_event_loop_lag_seconds_bucket", (("le", "0.25"),))] == 90
    assert m[("reverse_websockify_event_loop_lag_seconds_bucket", (("le", "0.5"),))] == 92
    assert m[("reverse_websockify_event_loop_lag_seconds_bucket", (("le", "+Inf"),))] == 93
    assert m[("reverse_websockify_event_loop_lag_seconds_count", ())] == 93
    assert m[("reverse_websockify_event_loop_lag_seconds_sum", ())] == 12.3
    assert m[("reverse_websockify_event_loop_lag_max_seconds", ())] == 11.0


def test_a_long_walk_gives_the_event_loop_turns() -> None:
    async def walk() -> tuple[int, int]:
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        counter = asyncio.ensure_future(count_turns())
        await asyncio.sleep(0)
        seen = 0
        async for _ in pacing.paced(range(50)):
            time.sleep(pacing.HOLD_SECONDS / 2)  # an item that costs half a hold: a turn every second or third
            seen += 1
        counter.cancel()
        return seen, turns

    seen, turns = asyncio.run(walk())
    assert seen == 50 and turns >= 15
