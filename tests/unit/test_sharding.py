"""[shards]: the ownership rule, the config's shard table and its one-line errors, a shard's view."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest

from reverse_websockify.config import EXAMPLE_CONFIG, ConfigError, Endpoint, load
from reverse_websockify.sharding import owner
from tests.support.programs import SERVER_NAME, command

SEED_IDS = ("LKLAFA155MA767657", "LKLAFA151NA774655")
SHARDS = '[shards]\nhttp_server_endpoints = ["127.0.0.1:39001", "127.0.0.1:39002"]\n'


# -- the rule ---------------------------------------------------------------------------------


def test_owner_is_crc32_of_the_utf8_id_modulo_the_count() -> None:
    # CRC-32/IEEE's published check value: crc32("123456789") = 0xCBF43926, in any language.
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert [owner("123456789", n) for n in (1, 2, 3, 7)] == [0, 0xCBF43926 % 2, 0xCBF43926 % 3, 0xCBF43926 % 7]
    # Pinned: a change here moves agents to other shards in every deployment.
    assert [owner(sid, 2) for sid in SEED_IDS] == [0, 1]
    assert [owner(sid, 3) for sid in SEED_IDS] == [1, 1]
    assert owner("BUS4", 2) == 1 and owner("BUS1", 2) == 0


def test_owner_is_stable_across_processes() -> None:
    """Not Python's hash(), which is salted per process (PYTHONHASHSEED)."""
    script = "from reverse_websockify.sharding import owner; print([owner(f'ID{i}', 5) for i in range(50)])"
    runs = {subprocess.run(command(SERVER_NAME)[:1] + ["-c", script], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
                           ).stdout for seed in ("1", "2")}
    assert len(runs) == 1
    assert runs.pop().strip() == str([owner(f"ID{i}", 5) for i in range(50)])


def test_explicit_shard_wins_and_is_checked() -> None:
    assert owner("LKLAFA155MA767657", 2, explicit=1) == 1
    with pytest.raises(ValueError):
        owner("X", 2, explicit=2)
    with pytest.raises(ValueError):
        owner("X", 0)


# -- the config ---------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_without_shards_nothing_changes(tmp_path: Path) -> None:
    config = load(write(tmp_path, EXAMPLE_CONFIG))
    assert config.shards is None and config.shard is None
    assert config.for_shard(None) is config
    assert config.misdirected(SEED_IDS[0]) is None
    assert all(s.shard is None for s in config.services.values())


def test_shards_table_and_views(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.replace('[remote_service.', SHARDS + '[remote_service.', 1)
    text += '[remote_service.PINNED]\nlocal_listen_endpoint = "0.0.0.0:39040"\nshard = 0\n'
    config = load(write(tmp_path, text))
    assert config.shards is not None
    assert config.shards.endpoints == (Endpoint("127.0.0.1", 39001), Endpoint("127.0.0.1", 39002))
    assert dict(config.shards.owners) == {SEED_IDS[0]: 0, SEED_IDS[1]: 1, "PINNED": 0}
    assert config.services["PINNED"].shard == 0 and config.services[SEED_IDS[0]].shard is None
    zero, one = config.for_shard(0), config.for_shard(1)
    assert (zero.http, list(zero.services), zero.shard) == (Endpoint("127.0.0.1", 39001), [SEED_IDS[0], "PINNED"], 0)
    assert (one.http, list(one.services), one.shard) == (Endpoint("127.0.0.1", 39002), [SEED_IDS[1]], 1)
    assert zero.misdirected(SEED_IDS[0]) is None and zero.misdirected("UNKNOWN") is None
    why = zero.misdirected(SEED_IDS[1])
    assert why is not None and "shard 1 (127.0.0.1:39002)" in why and "this is shard 0" in why
    with pytest.raises(ConfigError, match="run one shard"):
        config.for_shard(None)
    with pytest.raises(ConfigError, match=r"--shard 2: not in 0\.\.1"):
        config.for_shard(2)
    with pytest.raises(ConfigError, match="no \\[shards\\] table"):
        load(write(tmp_path, EXAMPLE_CONFIG)).for_shard(0)


def test_reload_view(tmp_path: Path) -> None:
    """A shard's SIGHUP takes its share of the new file; a changed [shards] needs a restart."""
    text = EXAMPLE_CONFIG.replace('[remote_service.', SHARDS + '[remote_service.', 1)
    running = load(write(tmp_path, text)).for_shard(1)
    same = load(write(tmp_path, text))
    assert list(same.reload_view(running).services) == [SEED_IDS[1]]
    pinned = load(write(tmp_path, text.replace('"0.0.0.0:39034"', '"0.0.0.0:39034"\nshard = 1')))
    assert list(pinned.reload_view(running).services) == list(SEED_IDS)  # Bus01 moved to shard 1
    three = load(write(tmp_path, text.replace('"127.0.0.1:39002"]', '"127.0.0.1:39002", "127.0.0.1:39003"]')))
    with pytest.raises(ConfigError, match="restart of every shard"):
        three.reload_view(running)
    with pytest.raises(ConfigError, match="restart of every shard"):
        load(write(tmp_path, EXAMPLE_CONFIG)).reload_view(running)
    unsharded = load(write(tmp_path, EXAMPLE_CONFIG))
    assert unsharded.reload_view(unsharded) is unsharded


HTTP = 'http_server_endpoint = "127.0.0.1:39000"\n'
SERVICE = '[remote_service.A]\nlocal_listen_endpoint = "0.0.0.0:39034"\n'

ERRORS = {
    "not a table": (HTTP + "shards = 3\n" + SERVICE, "shards: expected a table"),
    "unknown key": (HTTP + SHARDS + "count = 2\n" + SERVICE, "shards.count: unknown key"),
    "missing endpoints": (HTTP + "[shards]\n" + SERVICE, "shards.http_server_endpoints: expected a non-empty list"),
    "empty endpoints": (HTTP + "[shards]\nhttp_server_endpoints = []\n" + SERVICE,
                        "shards.http_server_endpoints: expected a non-empty list"),
    "bad endpoint": (HTTP + '[shards]\nhttp_server_endpoints = ["127.0.0.1:1", "nope"]\n' + SERVICE,
                     "shards.http_server_endpoints[1]: 'nope' is not HOST:PORT"),
    "duplicate endpoint": (HTTP + '[shards]\nhttp_server_endpoints = ["127.0.0.1:39001", "127.0.0.1:39001"]\n' + SERVICE,
                           "shards.http_server_endpoints[1]: port 39001 is already used by shards.http_server_endpoints[0]"),
    "endpoint is the status endpoint": (HTTP + '[shards]\nhttp_server_endpoints = ["0.0.0.0:39000"]\n' + SERVICE,
                                        "shards.http_server_endpoints[0]: port 39000 is already used by "
                                        "http_server_endpoint"),
    "service on a shard's port": (HTTP + SHARDS + SERVICE.replace("39034", "39002"),
                                  "remote_service.A.local_listen_endpoint: port 39002 is already used by "
                                  "shards.http_server_endpoints[1]"),
    "shard out of range": (HTTP + SHARDS + SERVICE + "shard = 2\n",
                           "remote_service.A.shard: expected a shard number in 0..1 (shards.http_server_endpoints "
                           "has 2), got 2"),
    "negative shard": (HTTP + SHARDS + SERVICE + "shard = -1\n", "remote_service.A.shard: expected a shard number"),
    "shard not a number": (HTTP + SHARDS + SERVICE + 'shard = "1"\n', "got '1'"),
    "shard is a bool": (HTTP + SHARDS + SERVICE + "shard = true\n", "got True"),
    "shard without [shards]": (HTTP + SERVICE + "shard = 0\n", "remote_service.A.shard: needs a [shards] table"),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_config_errors_are_one_line(tmp_path: Path, name: str) -> None:
    text, expected = ERRORS[name]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    assert expected in message, message


def test_merged_metrics_are_one_valid_exposition() -> None:
    """Families stay together under one HELP/TYPE; every sample gets its shard label."""
    from reverse_websockify.merged_status import merge_metrics
    from tests.support.metrics import samples

    def shard_text(service: str, value: int) -> str:
        return (f'# HELP rw_bytes_total Bytes\n# TYPE rw_bytes_total counter\nrw_bytes_total{{service="{service}"}} '
                f'{value}.0\n# HELP rw_up Up\n# TYPE rw_up gauge\nrw_up 1.0\n')

    merged = merge_metrics([(0, shard_text("A", 5)), (1, shard_text("B", 7))])
    assert merged.count("# HELP rw_bytes_total") == 1 and merged.count("# TYPE rw_up") == 1
    assert samples(merged) == {("rw_bytes_total", (("service", "A"), ("shard", "0"))): 5.0,
                               ("rw_bytes_total", (("service", "B"), ("shard", "1"))): 7.0,
                               ("rw_up", (("shard", "0"),)): 1.0, ("rw_up", (("shard", "1"),)): 1.0}
