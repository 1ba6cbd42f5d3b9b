from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

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
