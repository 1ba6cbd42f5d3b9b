"""GET /metrics: Prometheus text format through prometheus_client, read from the services at scrape time.

Nothing is counted twice: the relay already keeps per-tunnel byte and stream
counters (for the status page), so a custom collector reads them when
scraped instead of updating metric objects on the hot path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .reasons import StreamFailure

if TYPE_CHECKING:
    from .service import Service

PREFIX = "reverse_websockify"


class ServiceCollector(Collector):
    def __init__(self, services: Iterable[Service]) -> None:
        self.services = list(services)

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "reverse_websockify version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        relayed = CounterMetricFamily(f"{PREFIX}_bytes", "Payload bytes relayed, by direction",
                                      labels=["service", "direction"])
        opened = CounterMetricFamily(f"{PREFIX}_streams_opened", "User connections given a stream",
                                     labels=["service"])
        failed = CounterMetricFamily(f"{PREFIX}_streams_failed",
                                     "User connections that never reached the service, by reason",
                                     labels=["service", "reason"])
        connects = CounterMetricFamily(f"{PREFIX}_agent_connects", "Agent WebSocket sessions started",
                                       labels=["service"])
        disconnects = CounterMetricFamily(f"{PREFIX}_agent_disconnects", "Agent WebSocket sessions ended",
                                          labels=["service"])
        online = GaugeMetricFamily(f"{PREFIX}_agent_online", "1 while an agent is attached", labels=["service"])
        active = GaugeMetricFamily(f"{PREFIX}_active_streams", "Open user connections (incl. waiting for an agent)",
                                   labels=["service"])
        resumed = CounterMetricFamily(f"{PREFIX}_sessions_resumed", "Agent sessions carried over to a new WebSocket",
                                      labels=["service"])
        expired = CounterMetricFamily(f"{PREFIX}_sessions_expired",
                                      "Detached agent sessions given up after resume_seconds", labels=["service"])
        carried = CounterMetricFamily(f"{PREFIX}_streams_resumed", "Streams carried over a lost link",
                                      labels=["service"])
        retransmitted = CounterMetricFamily(f"{PREFIX}_bytes_retransmitted",
                                            "Payload bytes sent again after a lost link", labels=["service"])
        detached = GaugeMetricFamily(f"{PREFIX}_session_detached",
                                     "1 while the agent's session waits for it to resume", labels=["service"])
        refusals = CounterMetricFamily(f"{PREFIX}_agent_refusals",
                                       "Agents refused at attach (token, certificate binding, revoked), by reason",
                                       labels=["service", "reason"])
        identity = GaugeMetricFamily(f"{PREFIX}_agent_identity_info",
                                     "The certificate names the service's agent presented (1 while it has a session)",
                                     labels=["service", "identity"])
        latency = HistogramMetricFamily(f"{PREFIX}_stream_open_seconds",
                                        "From a user's accept to the agent's connect to the local service",
                                        labels=["service"])
        for service in self.services:
            sid = service.service_id
            snap = service.snapshot()
            relayed.add_metric([sid, "to_service"], snap["bytes_to_service"])
            relayed.add_metric([sid, "from_service"], snap["bytes_from_service"])
            opened.add_metric([sid], snap["streams_opened_total"])
            for reason in StreamFailure:
                failed.add_metric([sid, reason.value], service.stats.failures.get(reason, 0))
            connects.add_metric([sid], service.agent_connects)
            disconnects.add_metric([sid], service.agent_disconnects)
            online.add_metric([sid], 1 if snap["connected"] else 0)
            active.add_metric([sid], snap["client_connection_count"])
            stats = service.stats
            resumed.add_metric([sid], stats.sessions_resumed)
            expired.add_metric([sid], stats.sessions_expired)
            carried.add_metric([sid], stats.streams_resumed)
            retransmitted.add_metric([sid], stats.bytes_retransmitted)
            detached.add_metric([sid], 1 if service.detached is not None else 0)
            latency.add_metric([sid], stats.latency.cumulative(), sum_value=stats.latency.total)
            for reason, count in stats.refusals.items():
                refusals.add_metric([sid, reason], count)
            if snap["agent_identity"]:
                identity.add_metric([sid, snap["agent_identity"]], 1)
        yield from (relayed, opened, failed, connects, disconnects, online, active, resumed, expired, carried,
                    retransmitted, detached, refusals, identity, latency)


def render_metrics(services: Iterable[Service]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(services))
    return generate_latest(registry), CONTENT_TYPE_LATEST
