"""GET /metrics: Prometheus text format through prometheus_client, read from the services at scrape time.

Nothing is counted twice: the relay already keeps per-tunnel byte and stream
counters (for the status page), so a scrape reads them (``read``, on the event
loop, cheap) and formats them (``render``, in a worker thread: megabytes of
text for a large fleet must not hold the loop).

Series per service are what a small deployment wants and what a fleet of
thousands cannot afford (17 MB a scrape at 8,000 agents), so they are given
while the server has at most ``metrics_per_service_limit`` services and on
request (``?per_service=1``, or ``?service=ID`` repeated for a few). Otherwise the
same metric names come without the ``service`` label, summed over the fleet:
``sum(rate(reverse_websockify_bytes_total[5m]))`` reads the same either way.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Iterator, NamedTuple, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .latency import BUCKETS, cumulative
from .looplag import BUCKETS as LAG_BUCKETS
from .reasons import StreamFailure

if TYPE_CHECKING:
    from .looplag import LoopLag
    from .service import Service

PREFIX = "reverse_websockify"
_REASONS = tuple(StreamFailure)  # iterating an Enum class is slow; 8,000 services do it at every scrape
_NO_FAILURES = (0,) * len(_REASONS)


class ServiceReading(NamedTuple):
    """One service's numbers at scrape time: plain values, safe to format off the event loop.

    A tuple, not a frozen dataclass: built for every service at every scrape, 5x cheaper.
    """

    service_id: str
    bytes_to_service: int
    bytes_from_service: int
    streams_opened: int
    failures: tuple[int, ...]  # by StreamFailure, in its order
    agent_connects: int
    agent_disconnects: int
    online: bool
    active_streams: int
    sessions_resumed: int
    sessions_expired: int
    streams_resumed: int
    bytes_retransmitted: int
    detached: bool
    refusals: tuple[tuple[str, int], ...]
    identity: str | None
    latency_counts: tuple[int, ...]  # per bucket, the last is +Inf
    latency_total: float


class LoopLagReading(NamedTuple):
    """The event loop's lag histogram (looplag.py) at scrape time, copied on the loop."""

    counts: tuple[int, ...]  # per bucket, the last is +Inf
    total: float
    longest: float

    @classmethod
    def of(cls, lag: LoopLag) -> LoopLagReading:
        return cls(tuple(lag.histogram.counts), lag.histogram.total, lag.longest)


def read(service: Service) -> ServiceReading:
    """A few attribute reads (not the status snapshot): 8,000 services are read at every scrape."""
    stats = service.stats
    to_service, from_service, opened, users = service.totals()
    identity = service.agent_identity if service.tunnel is not None else None
    return ServiceReading(
        service.service_id, to_service, from_service, opened,
        tuple(stats.failures.get(reason, 0) for reason in _REASONS) if stats.failures else _NO_FAILURES,
        service.agent_connects, service.agent_disconnects, service.agent_attached, users,
        stats.sessions_resumed, stats.sessions_expired, stats.streams_resumed, stats.bytes_retransmitted,
        service.detached is not None, tuple(stats.refusals.items()) if stats.refusals else (),
        ", ".join(identity.names) or None if identity else None, tuple(stats.latency.counts), stats.latency.total)


def fleet_total(readings: Sequence[ServiceReading]) -> ServiceReading:
    """Every service's reading summed into one, column by column: the fleet-wide series are then
    formatted like one service's without its label, in a few C-level sums instead of a loop over
    8,000 readings (80 ms -> a few)."""
    columns = zip(*readings) if readings else ((),) * len(ServiceReading._fields)
    return ServiceReading(*(_column_total(name, values) for name, values in zip(ServiceReading._fields, columns)))


def _column_total(name: str, values: Sequence[Any]) -> Any:
    if name == "service_id" or name == "identity":  # one service's own: no fleet-wide value
        return "" if name == "service_id" else None
    if name == "refusals":  # (reason, count) pairs, reasons differing between services
        refusals: defaultdict[str, int] = defaultdict(int)
        for pairs in values:
            for reason, count in pairs:
                refusals[reason] += count
        return tuple(refusals.items())
    if name == "failures" or name == "latency_counts":  # per reason, per bucket: summed position by position
        return tuple(map(sum, zip(*values)))
    return sum(values)


class _Family:
    """Values by label tuple; with ``per_service`` off, the service label is dropped and values summed."""

    def __init__(self, metric: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
                 labels: Sequence[str], per_service: bool) -> None:
        self.per_service = per_service
        self.metric = metric(name, documentation, labels=(["service"] if per_service else []) + list(labels))
        self.values: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def add(self, service_id: str, labels: Sequence[str], value: float) -> None:
        self.values[(service_id, *labels) if self.per_service else tuple(labels)] += value

    def done(self) -> Metric:
        for labels, value in self.values.items():
            self.metric.add_metric(list(labels), value)
        return self.metric


def families(readings: Sequence[ServiceReading], per_service: bool, services: int,
             loop_lag: LoopLagReading | None = None) -> Iterator[Metric]:
    info = GaugeMetricFamily(f"{PREFIX}_build_info", "reverse_websockify version", labels=["version"])
    info.add_metric([__version__], 1)
    yield info
    configured = GaugeMetricFamily(f"{PREFIX}_services", "Services in the running config")
    configured.add_metric([], services)
    yield configured
    if loop_lag is not None:
        yield from loop_lag_families(loop_lag)

    def family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, documentation: str,
               *labels: str) -> _Family:
        return _Family(kind, f"{PREFIX}_{name}", documentation, labels, per_service)

    counter, gauge = CounterMetricFamily, GaugeMetricFamily
    relayed = family(counter, "bytes", "Payload bytes relayed, by direction", "direction")
    opened = family(counter, "streams_opened", "User connections given a stream")
    failed = family(counter, "streams_failed", "User connections that never reached the service, by reason", "reason")
    connects = family(counter, "agent_connects", "Agent WebSocket sessions started")
    disconnects = family(counter, "agent_disconnects", "Agent WebSocket sessions ended")
    online = family(gauge, "agent_online", "Services with an agent attached (1 or 0 per service)")
    active = family(gauge, "active_streams", "Open user connections (incl. waiting for an agent)")
    resumed = family(counter, "sessions_resumed", "Agent sessions carried over to a new WebSocket")
    expired = family(counter, "sessions_expired", "Detached agent sessions given up after resume_seconds")
    carried = family(counter, "streams_resumed", "Streams carried over a lost link")
    retransmitted = family(counter, "bytes_retransmitted", "Payload bytes sent again after a lost link")
    detached = family(gauge, "session_detached", "Agent sessions waiting for their agent to resume them")
    refusals = family(counter, "agent_refusals",
                      "Agents refused at attach (token, certificate binding, revoked), by reason", "reason")
    identity = GaugeMetricFamily(f"{PREFIX}_agent_identity_info",
                                 "The certificate names the service's agent presented (1 while it has a session)",
                                 labels=["service", "identity"])
    latency: dict[tuple[str, ...], list[float]] = {}  # bucket counts, then the sum of seconds
    for r in readings if per_service else (fleet_total(readings),):
        sid = r.service_id
        relayed.add(sid, ["to_service"], r.bytes_to_service)
        relayed.add(sid, ["from_service"], r.bytes_from_service)
        opened.add(sid, [], r.streams_opened)
        for reason, count in zip(_REASONS, r.failures):
            failed.add(sid, [reason.value], count)
        connects.add(sid, [], r.agent_connects)
        disconnects.add(sid, [], r.agent_disconnects)
        online.add(sid, [], r.online)
        active.add(sid, [], r.active_streams)
        resumed.add(sid, [], r.sessions_resumed)
        expired.add(sid, [], r.sessions_expired)
        carried.add(sid, [], r.streams_resumed)
        retransmitted.add(sid, [], r.bytes_retransmitted)
        detached.add(sid, [], r.detached)
        for reason, count in r.refusals:
            refusals.add(sid, [reason], count)
        if per_service and r.identity:
            identity.add_metric([sid, r.identity], 1)
        sums = latency.setdefault((sid,) if per_service else (), [0] * (len(BUCKETS) + 2))
        for i, n in enumerate((*r.latency_counts, r.latency_total)):
            sums[i] += n
    for f in (relayed, opened, failed, connects, disconnects, online, active, resumed, expired, carried,
              retransmitted, detached, refusals):
        yield f.done()
    if per_service:
        yield identity
    histogram = HistogramMetricFamily(f"{PREFIX}_stream_open_seconds",
                                      "From a user's accept to the agent's connect to the local service",
                                      labels=["service"] if per_service else [])
    for labels, sums in latency.items():
        histogram.add_metric(list(labels), cumulative([int(n) for n in sums[:-1]]), sum_value=sums[-1])
    yield histogram


def loop_lag_families(lag: LoopLagReading) -> Iterator[Metric]:
    histogram = HistogramMetricFamily(f"{PREFIX}_event_loop_lag_seconds",
                                      "How late a timer due every 10 ms fired: how long every tunnel waited")
    histogram.add_metric([], cumulative(lag.counts, LAG_BUCKETS), sum_value=lag.total)
    yield histogram
    longest = GaugeMetricFamily(f"{PREFIX}_event_loop_lag_max_seconds", "The longest event loop lag since start")
    longest.add_metric([], lag.longest)
    yield longest


class _Readings(Collector):
    def __init__(self, readings: Sequence[ServiceReading], per_service: bool, services: int,
                 loop_lag: LoopLagReading | None) -> None:
        self.args = (readings, per_service, services, loop_lag)

    def collect(self) -> Iterable[Metric]:
        return families(*self.args)


def render(readings: Sequence[ServiceReading], per_service: bool, services: int,
           loop_lag: LoopLagReading | None = None) -> tuple[bytes, str]:
    """The exposition text; pure, so it may run in a worker thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Readings(readings, per_service, services, loop_lag))
    return generate_latest(registry), CONTENT_TYPE_LATEST
