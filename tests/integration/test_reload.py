"""SIGHUP reloads config.toml: added services listen, removed ones stop, unchanged ones keep their streams."""

from __future__ import annotations

import signal
import socket

from tests.support.deployment import Deployment
from tests.support.ports import free_port
from tests.support.services import Service
from tests.support.waiting import wait_for


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_sighup_reload(deployment: Deployment, echo: Service) -> None:
    deployment.services["GONE"] = free_port()
    deployment.write_config()
    server = deployment.start_server()
    deployment.start_agent("BUS1", echo.port)
    gone_agent = deployment.start_agent("GONE", echo.port)
    user = socket.create_connection(("127.0.0.1", deployment.services["BUS1"]))
    user.sendall(b"before")
    assert user.recv(6) == b"before"

    gone_port = deployment.services.pop("GONE")
    deployment.services["NEW"] = free_port()
    deployment.write_config()
    deployment.config_path.write_text(deployment.config_path.read_text().replace('nickname = "nick-BUS1"',
                                                                                 'nickname = "renamed"'))
    server.signal(signal.SIGHUP)
    server.wait_log("reloaded")
    assert "added NEW; removed GONE; changed 1" in server.log()  # BUS1's nickname
    wait_for(lambda: _listening(deployment.services["NEW"]), 5, "the new service to listen")
    assert not _listening(gone_port)
    gone_agent.wait_log("service removed from the config")
    status = deployment.status()
    assert set(status) == {"BUS1", "NEW"}
    assert status["BUS1"]["nickname"] == "renamed" and status["BUS1"]["connected"]
    user.sendall(b"after")  # the unchanged service kept its agent and its stream
    assert user.recv(5) == b"after"
    deployment.start_agent("NEW", echo.port)

    # Unchanged: nothing is touched, and the log says so.
    server.signal(signal.SIGHUP)
    wait_for(lambda: "added none; removed none; changed 0" in server.log(), 5, "the second reload")
    assert " (unchanged): 2 services" in server.log()  # the same bytes: not parsed again
    user.sendall(b"same")
    assert user.recv(4) == b"same"

    # A broken file keeps the running config and says why.
    deployment.config_path.write_text("http_server_endpoint = \n")
    server.signal(signal.SIGHUP)
    server.wait_log("reload failed, keeping the running config")
    assert "TOML syntax error" in server.log()
    user.sendall(b"still")
    assert user.recv(5) == b"still"
    assert set(deployment.status()) == {"BUS1", "NEW"}
    user.close()
