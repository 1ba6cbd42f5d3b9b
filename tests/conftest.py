from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.reliability.faultproxy import FaultProxy
from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Service


@pytest.fixture
def echo() -> Iterator[Service]:
    server = Service()
    yield server
    server.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A server with one service 'BUS1' (and room for more): call start_server()/start_agent()."""
    d = Deployment(tmp=tmp_path, services={"BUS1": free_port()}, http_port=free_port())
    yield d
    d.stop()


@pytest.fixture
def make_proxy(deployment: Deployment) -> Iterator[Callable[[int], FaultProxy]]:
    """Fault proxies between agents and the server (tests/reliability/faultproxy.py).

    Closed after the deployment has stopped, else closing a proxy cuts the agent's last link first
    (stopping twice is harmless: the deployment fixture's stop() then finds nothing running).
    """
    proxies: list[FaultProxy] = []

    def make(upstream_port: int) -> FaultProxy:
        proxy = FaultProxy(upstream_port)
        proxies.append(proxy)
        return proxy

    yield make
    deployment.stop()
    for proxy in proxies:
        proxy.close()
