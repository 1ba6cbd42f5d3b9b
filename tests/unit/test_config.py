"""reverse_websockify.config.load: the seed's file, and one precise line for every mistake."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reverse_websockify.config import EXAMPLE_CONFIG, ConfigError, Endpoint, ServerConfig, load

HTTP = 'http_server_endpoint = "127.0.0.1:39000"\n'


def service(sid: str = "BUS1", listen: str = "0.0.0.0:39034", **extra: str) -> str:
    lines = [f"[remote_service.{sid}]", f'local_listen_endpoint = "{listen}"']
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def error(path: Path, *words: str) -> str:
    """load(path) must fail with one line that starts with the path and holds ``words``."""
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message and "\r" not in message, repr(message)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# -- what loads ---------------------------------------------------------------------------


def test_seed_example_loads_unchanged(write) -> None:  # type: ignore[no-untyped-def]
    path = write(EXAMPLE_CONFIG)
    config = load(path)
    assert isinstance(config, ServerConfig)
    assert config.path == path
    assert config.http == Endpoint("127.0.0.1", 39000)
    assert list(config.services) == ["LKLAFA155MA767657", "LKLAFA151NA774655"]
    bus1 = config.services["LKLAFA155MA767657"]
    assert (bus1.id, bus1.nickname, bus1.listen, bus1.token) == (
        "LKLAFA155MA767657", "Bus01", Endpoint("0.0.0.0", 39034), None)
    bus2 = config.services["LKLAFA151NA774655"]
    assert (bus2.nickname, bus2.listen) == ("Bus02", Endpoint("0.0.0.0", 39036))
    assert config.tls is None


def test_seed_text_is_the_design_example() -> None:
    assert EXAMPLE_CONFIG == (
        'http_server_endpoint = "127.0.0.1:39000"\n'
        "\n"
        "[remote_service.LKLAFA155MA767657]\n"
        'nickname = "Bus01"\n'
        'local_listen_endpoint = "0.0.0.0:39034"\n'
        "[remote_service.LKLAFA151NA774655]\n"
        'nickname = "Bus02"\n'
        'local_listen_endpoint = "0.0.0.0:39036"\n'
    )


def test_optional_keys(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "server.pem").write_text("x")
    (tmp_path / "server.key").write_text("x")
    path = write(
        HTTP
        + "agent_wait_seconds = 0\nopen_timeout_seconds = 3\nping_interval_seconds = 2.5\n"
        + "ping_timeout_seconds = 4\nhandshake_timeout_seconds = 6\nmax_streams_per_agent = 7\n"
        + "receive_budget_mib = 0.5\n"
        + 'trusted_proxies = ["10.0.0.1", "192.168.0.0/16", "::1"]\n'
        + '[tls]\ncert = "server.pem"\nkey = "server.key"\n'
        + service("A", "[::1]:40001", token='"s3cret"', nickname='"Bus"')
        + service("B", "localhost:40002")
    )
    config = load(path)
    assert (config.agent_wait, config.open_timeout, config.ping_interval) == (0.0, 3.0, 2.5)
    assert (config.ping_timeout, config.handshake_timeout, config.max_streams_per_agent) == (4.0, 6.0, 7)
    assert config.receive_budget == 512 * 1024
    assert config.trusted_proxies == ("10.0.0.1", "192.168.0.0/16", "::1")
    assert config.tls is not None and config.tls.cert == tmp_path / "server.pem"
    assert config.tls.client_ca is None
    assert config.services["A"].listen == Endpoint("::1", 40001)
    assert str(config.services["A"].listen) == "[::1]:40001"
    assert config.services["A"].token == "s3cret"
    assert "s3cret" not in repr(config.services["A"])
    assert config.services["B"].listen == Endpoint("localhost", 40002)
    assert config.services["B"].nickname == ""


def test_no_services_is_allowed(write) -> None:  # type: ignore[no-untyped-def]
    assert load(write(HTTP)).services == {}


# -- every error: one line, the file, the key ------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error(tmp_path / "nope.toml", "no such file")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    error(tmp_path, "cannot read")


def test_not_utf8(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'http_server_endpoint = "caf\xe9"\n')
    error(path, "UTF-8")


@pytest.mark.parametrize(
    "text",
    [
        "http_server_endpoint = \n",
        'http_server_endpoint = "127.0.0.1:1\n',  # unterminated string: tomllib names the \n
        "[remote_service.A\n",
        HTTP + HTTP,
    ],
)
def test_toml_syntax_error(write, text: str) -> None:  # type: ignore[no-untyped-def]
    error(write(text), "TOML syntax error", "line")


def test_unknown_top_level_key(write) -> None:  # type: ignore[no-untyped-def]
    message = error(write(HTTP + "listen_backlog = 5\n"), "listen_backlog", "unknown key")
    assert "http_server_endpoint" in message  # lists what is allowed


def test_unknown_service_key(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("BUS1", nickname='"x"', nick_name='"y"')),
          "remote_service.BUS1.nick_name", "unknown key")


def test_unknown_tls_key(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + '[tls]\ncert = "a"\nkey = "b"\nca = "c"\n'), "tls.ca", "unknown key")


def test_missing_http_server_endpoint(write) -> None:  # type: ignore[no-untyped-def]
    error(write(service()), "http_server_endpoint", "missing")


def test_missing_local_listen_endpoint(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + '[remote_service.BUS9]\nnickname = "Bus09"\n'),
          "remote_service.BUS9.local_listen_endpoint", "missing")


BAD_ENDPOINTS = ["abc", "1.2.3.4", "host:0", "host:70000", "[zz]:1", "", ":80", "host:", "a b:1",
                 "::1:80", "[::1]", "host:123456", "[1.2.3.4]:80", "ho$t:80"]


@pytest.mark.parametrize("bad", BAD_ENDPOINTS)
def test_bad_local_listen_endpoint(write, bad: str) -> None:  # type: ignore[no-untyped-def]
    message = error(write(HTTP + service("BUS1", bad)), "remote_service.BUS1.local_listen_endpoint")
    # names the offending text (whole, or the host or port part that is wrong)
    assert repr(bad) in message or any(part in message for part in re.split(r"[\[\]:]", bad) if part)


@pytest.mark.parametrize("bad", BAD_ENDPOINTS)
def test_bad_http_server_endpoint(write, bad: str) -> None:  # type: ignore[no-untyped-def]
    error(write(f'http_server_endpoint = "{bad}"\n'), "http_server_endpoint")


@pytest.mark.parametrize("bad", ["host:0", "host:70000"])
def test_bad_port_is_named(write, bad: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("BUS1", bad)), "remote_service.BUS1.local_listen_endpoint",
          f"port {bad.split(':')[1]}", "1..65535")


@pytest.mark.parametrize("value", ["39000", "true", "[\"127.0.0.1:39000\"]", "{ host = \"x\" }"])
def test_endpoint_not_a_string(write, value: str) -> None:  # type: ignore[no-untyped-def]
    error(write(f"http_server_endpoint = {value}\n"), "http_server_endpoint", "expected a string")


def test_endpoint_with_newline_stays_one_line(write) -> None:  # type: ignore[no-untyped-def]
    error(write('http_server_endpoint = "127.0.0.1:1\\n"\n'), "http_server_endpoint")


@pytest.mark.parametrize(
    "first, second",
    [
        ("0.0.0.0:39034", "0.0.0.0:39034"),
        ("0.0.0.0:39034", "127.0.0.1:39034"),
        ("127.0.0.1:39034", "0.0.0.0:39034"),
        ("127.0.0.1:39034", "127.0.0.1:39034"),
        ("[::]:39034", "127.0.0.1:39034"),
        ("[::]:39034", "0.0.0.0:39034"),
    ],
)
def test_two_services_on_one_port(write, first: str, second: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("A", first) + service("B", second)),
          "remote_service.B.local_listen_endpoint", "port 39034", "remote_service.A.local_listen_endpoint")


def test_same_port_on_two_specific_addresses_is_fine(write) -> None:  # type: ignore[no-untyped-def]
    config = load(write(HTTP + service("A", "127.0.0.1:39034") + service("B", "127.0.0.2:39034")))
    assert len(config.services) == 2


@pytest.mark.parametrize("listen", ["0.0.0.0:39000", "127.0.0.1:39000"])
def test_service_on_the_http_port(write, listen: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("A", listen)),
          "remote_service.A.local_listen_endpoint", "port 39000", "http_server_endpoint")


@pytest.mark.parametrize("value", ["5", "true", "[\"Bus\"]", "{ a = 1 }"])
def test_non_string_nickname(write, value: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("A", nickname=value)), "remote_service.A.nickname", "string")


@pytest.mark.parametrize("value", ['""', "5", "false"])
def test_bad_token(write, value: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service("A", token=value)), "remote_service.A.token", "non-empty string")


@pytest.mark.parametrize("sid", ['"has space"', '"a/b"', '"é"', '""', '"' + "x" * 129 + '"'])
def test_bad_service_id(write, sid: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service(sid)), "remote_service.", "ID")


def test_service_not_a_table(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + "[remote_service]\nBUS1 = 5\n"), "remote_service.BUS1", "table")
    error(write(HTTP + "remote_service = 5\n"), "remote_service")


@pytest.mark.parametrize("entry", ['"10.0.0.0/33"', '"not-an-ip"', '"1.2.3"', '""', '"::g"'])
def test_bad_trusted_proxies_entry(write, entry: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + f"trusted_proxies = [{entry}]\n"), "trusted_proxies", "not an address or network")


def test_trusted_proxies_not_a_list(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + 'trusted_proxies = "127.0.0.1"\n'), "trusted_proxies", "list")


def test_tls_table_missing_cert(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "server.key").write_text("x")
    error(write(HTTP + '[tls]\nkey = "server.key"\n'), "tls.cert", "missing")


def test_tls_table_missing_key(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "server.pem").write_text("x")
    error(write(HTTP + '[tls]\ncert = "server.pem"\n'), "tls.key", "missing")


def test_tls_file_missing(write, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "server.pem").write_text("x")
    (tmp_path / "server.key").write_text("x")
    error(write(HTTP + '[tls]\ncert = "server.pem"\nkey = "server.key"\nclient_ca = "ca.pem"\n'),
          "tls.client_ca", "'ca.pem'", "no such file")


def test_tls_not_a_table(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + 'tls = "yes"\n'), "tls", "table")


@pytest.mark.parametrize(
    "line, key",
    [
        ("agent_wait_seconds = -1", "agent_wait_seconds"),
        ('open_timeout_seconds = "5"', "open_timeout_seconds"),
        ("ping_interval_seconds = 0", "ping_interval_seconds"),
        ("ping_timeout_seconds = true", "ping_timeout_seconds"),
        ("handshake_timeout_seconds = 0.01", "handshake_timeout_seconds"),
        ("max_streams_per_agent = 0", "max_streams_per_agent"),
        ("max_streams_per_agent = 1.5", "max_streams_per_agent"),
        ("max_streams_per_agent = true", "max_streams_per_agent"),
    ],
)
def test_bad_numbers(write, line: str, key: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + line + "\n"), key)


# -- library bugs found while writing these tests (see the report) ----------------------------


def test_service_id_with_trailing_newline_is_refused(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + service('"BUS1\\n"')), "remote_service.")


def test_unknown_key_with_newline_stays_one_line(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + '"bad\\nkey" = 1\n'), "unknown key")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # ipaddress on a bool
@pytest.mark.parametrize("entry", ["5", "true"])
def test_non_string_trusted_proxies_entry(write, entry: str) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + f"trusted_proxies = [{entry}]\n"), "trusted_proxies")


def test_nan_seconds_are_refused(write) -> None:  # type: ignore[no-untyped-def]
    error(write(HTTP + "agent_wait_seconds = nan\n"), "agent_wait_seconds")


@pytest.mark.parametrize("value, expected", [("0", "receive_budget_mib: expected a number >= 0.0625"),
                                             ("5000", "receive_budget_mib: at most 4096"),
                                             ('"8"', "receive_budget_mib: expected a number")])
def test_receive_budget_is_checked(write, value: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as error:
        load(write(HTTP + f"receive_budget_mib = {value}\n"))
    assert expected in str(error.value)


def test_a_reload_of_the_same_bytes_is_the_running_config(write) -> None:  # type: ignore[no-untyped-def]
    path = write(HTTP + service("BUS1"))
    running = load(path)
    assert load(path, running=running) is running  # not parsed again
    write(HTTP + service("BUS1", nickname='"renamed"'))
    renamed = load(path, running=running)
    assert renamed is not running and renamed.services["BUS1"].nickname == "renamed"
    assert renamed != running
    write(HTTP + service("BUS1"))  # back to the first bytes: equal to the first config, and a new object
    again = load(path, running=renamed)
    assert again is not renamed and again == running
    write("http_server_endpoint = \n")
    with pytest.raises(ConfigError):  # a broken file is an error even with a running config
        load(path, running=running)
