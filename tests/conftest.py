from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.harness import Deployment, EchoServer, free_port


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A server with one service 'BUS1' (and room for more): call start_server()/start_agent()."""
    d = Deployment(tmp=tmp_path, services={"BUS1": free_port()}, http_port=free_port())
    yield d
    d.stop()
