"""A sharded deployment ([shards]): the config, the generated nginx map, the shipped nginx-shards.conf."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from pathlib import Path

from tests.support.deployment import Deployment
from tests.support.nginx import ShippedNginx
from tests.support.ports import free_ports
from tests.support.programs import REPO, SERVER_NAME
from tests.support.waiting import wait_for

SHARDS_SITE = REPO / "packaging" / "rendezvous" / "nginx-shards.conf"
MAP_PATH = "/etc/nginx/reverse-websockify-shard-map.conf"  # where nginx-shards.conf includes the map from

# Owners with 2 shards: BUS1 -> 0 and BUS4 -> 1 by crc32 (tests/unit/test_sharding.py pins them), BUS2 pinned to 1.
OWNERS = {"BUS1": 0, "BUS2": 1, "BUS4": 1}


def sharded(tmp: Path, count: int = 2, extra_config: str = "", options: list[str] | None = None) -> Deployment:
    """A Deployment whose config has [shards] with ``count`` loopback endpoints; BUS2 sets ``shard = 1``."""
    ports = free_ports(1 + count + len(OWNERS))
    http, shard_ports, service_ports = ports[0], ports[1:1 + count], ports[1 + count:]
    endpoints = ", ".join(f'"127.0.0.1:{p}"' for p in shard_ports)
    d = Deployment(tmp=tmp, services=dict(zip(OWNERS, service_ports)), http_port=http,
                   extra_config=f"{extra_config}\n[shards]\nhttp_server_endpoints = [{endpoints}]\n",
                   service_config={"BUS2": "shard = 1"}, options=list(options or []))
    d.shard_ports = shard_ports  # type: ignore[attr-defined]
    return d


def shards_up(d: Deployment) -> list[dict]:
    """The merged status's /shards: one entry per shard (endpoint, up, services, error)."""
    with urllib.request.urlopen(f"{d.base_url}/shards", timeout=10) as response:
        return json.loads(response.read())


def wait_shards_up(d: Deployment, timeout: float = 20.0) -> None:
    def all_up() -> bool:
        d.check_alive()
        return all(s["up"] for s in shards_up(d))

    wait_for(all_up, timeout, f"every shard to answer: {d.server.log()[-3000:] if d.server else ''}", 0.2)


def shard_map(d: Deployment) -> str:
    """``reverse_websockify_server CONFIG --nginx-shard-map``, as a user runs it."""
    done = subprocess.run(d.programs.command(SERVER_NAME) + [str(d.config_path), "--nginx-shard-map"],
                          capture_output=True, text=True, timeout=60, env=d.env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def shard_nginx(tmp: Path, tls_dir: Path, d: Deployment) -> ShippedNginx:
    """nginx with the shipped nginx-shards.conf, its include pointed at the generated map of ``d``'s config."""
    (tmp / "nginx-shard-map.conf").write_text(shard_map(d))
    site = SHARDS_SITE.read_text()
    include = f"include {MAP_PATH};"
    assert site.count(include) == 1
    (tmp / "nginx-shards.conf").write_text(site.replace(include, f"include {tmp / 'nginx-shard-map.conf'};"))
    return ShippedNginx(tmp, tls_dir, d.http_port, tmp / "nginx-shards.conf")
