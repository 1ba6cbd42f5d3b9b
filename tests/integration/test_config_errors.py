"""Every config mistake: one line naming the file and the key, exit code 2, nothing listening."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.ports import free_port
from tests.support.programs import SERVER_NAME, command


def _run(config: Path | None, *extra: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = command(SERVER_NAME) + ([str(config)] if config else []) + list(extra)
    return subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


GOOD = '''http_server_endpoint = "127.0.0.1:{http}"
[remote_service.A]
nickname = "a"
local_listen_endpoint = "127.0.0.1:{a}"
'''

CASES = {
    "toml syntax": ('http_server_endpoint = "127.0.0.1:1\n', "TOML syntax error"),
    "unknown top key": (GOOD + "colour = 3\n", "colour: unknown key"),
    "unknown service key": (GOOD + 'nick = "x"\n', "remote_service.A.nick: unknown key"),
    "missing http endpoint": ('[remote_service.A]\nlocal_listen_endpoint = "127.0.0.1:{a}"\n', "http_server_endpoint: missing"),
    "missing listen endpoint": ('http_server_endpoint = "127.0.0.1:{http}"\n[remote_service.A]\nnickname = "a"\n',
                                "remote_service.A.local_listen_endpoint: missing"),
    "bad endpoint": (GOOD.replace('127.0.0.1:{a}', 'localhost'), "remote_service.A.local_listen_endpoint: 'localhost' is not HOST:PORT"),
    "port out of range": (GOOD.replace('127.0.0.1:{a}', '127.0.0.1:70000'), "port 70000"),
    "two services one port": (GOOD + '[remote_service.B]\nlocal_listen_endpoint = "0.0.0.0:{a}"\n',
                              "remote_service.B.local_listen_endpoint: port {a} is already used by remote_service.A.local_listen_endpoint"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_error_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    http, a = free_port(), free_port()
    text, expected = CASES[name]
    path = _config(tmp_path, text.format(http=http, a=a))
    result = _run(path)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0]
    assert expected.format(http=http, a=a) in lines[0]
    assert "Traceback" not in result.stderr
    assert not _listening(http) and not _listening(a)


def test_missing_file(tmp_path: Path) -> None:
    result = _run(tmp_path / "nope.toml")
    assert result.returncode == 2
    assert result.stderr.strip() == f"reverse_websockify_server: error: {tmp_path / 'nope.toml'}: no such file" or \
        result.stderr.strip().endswith(f"{tmp_path / 'nope.toml'}: no such file")


def test_port_in_use_listens_on_nothing(tmp_path: Path) -> None:
    http, a, b = free_port(), free_port(), free_port()
    path = _config(tmp_path, GOOD.format(http=http, a=a) + f'[remote_service.B]\nlocal_listen_endpoint = "127.0.0.1:{b}"\n')
    with socket.create_server(("127.0.0.1", b)):
        result = _run(path)
        assert result.returncode == 2
        line = result.stderr.strip()
        assert "\n" not in line
        assert f"{path}: remote_service.B.local_listen_endpoint: cannot listen on 127.0.0.1:{b}" in line
        assert "Address already in use" in line
        assert not _listening(http) and not _listening(a)
    with socket.create_server(("127.0.0.1", http)):
        result = _run(path)
        assert result.returncode == 2
        assert f"{path}: http_server_endpoint: cannot listen on 127.0.0.1:{http}" in result.stderr
        assert not _listening(a) and not _listening(b)


def test_check_config_and_example(tmp_path: Path) -> None:
    example = _run(None, "--example-config")
    assert example.returncode == 0 and "LKLAFA151NA774655" in example.stdout
    path = _config(tmp_path, example.stdout)
    checked = _run(path, "--check-config")
    assert checked.returncode == 0, checked.stderr
    assert "2 services" in checked.stdout


def test_no_config_lists_places_looked(tmp_path: Path) -> None:
    result = _run(None, cwd=tmp_path)
    assert result.returncode == 2
    assert "looked in" in result.stderr and str(tmp_path / "config.toml") in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_agent_flag_errors_one_line() -> None:
    agent = command("reverse_websockify_agent_service_side")
    for args, expected in [
        ([], "--service=HOST:PORT is required"),
        (["--service=127.0.0.1:1"], "--reverse-websockify=URL is required"),
        (["--service=nope", "--reverse-websockify=ws://h/forward_to_me/X"], "--service"),
        (["--service=127.0.0.1:1", "--reverse-websockify=http://h/x"], "must be a ws:// or wss:// URL"),
        (["--service=127.0.0.1:1", "--reverse-websockify=ws://h/other/X"], "must end in /forward_to_me/<ID>"),
        (["--service=127.0.0.1:1", "--reverse-websockify=wss://h/forward_to_me/X", "--ca-cert=/nonexistent.pem"],
         "--ca-cert: /nonexistent.pem: no such file"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ]:
        result = subprocess.run(agent + args, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2, (args, result)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)


def test_agent_accepts_seed_flag_spellings(tmp_path: Path) -> None:
    """--flag=value, --flag value and the Go original's -flag=value all parse (checked via a bad port)."""
    agent = command("reverse_websockify_agent_service_side")
    for args in (["--service=127.0.0.1:0"], ["--service", "127.0.0.1:0"], ["-service=127.0.0.1:0"]):
        result = subprocess.run(agent + args + ["--reverse-websockify=ws://h/forward_to_me/X"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "port 0" in result.stderr, result.stderr
