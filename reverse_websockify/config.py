"""Configuration of both programs -> frozen dataclasses: the server's TOML file, the agent's flags.

Every error is a ConfigError whose message names the file and the key (or the
flag), so the CLI can print exactly one line and exit 2 before anything listens
or connects.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .protocol import AGENT_PATH_PREFIX
from .sharding import owner


class ConfigError(Exception):
    """A one-line, user-facing description of what is wrong in the config."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return self.text

    @functools.cached_property
    def text(self) -> str:
        """host:port ([host]:port for IPv6); kept, since the status page writes it for every service."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ServiceConfig:
    id: str
    nickname: str
    listen: Endpoint
    token: str | None = field(default=None, repr=False)
    token_sha256: bytes | None = field(default=None, repr=False)  # sha256 of the token: no secret in the file
    agent_identity: str | None = None  # the client certificate's CN or DNS name that may attach (identity.py)
    shard: int | None = None  # [shards]: the shard that owns this service, when not left to the hash (sharding.py)

    @property
    def guarded(self) -> bool:
        """Whether anything more than reaching the server is asked of an agent attaching here."""
        return self.token is not None or self.token_sha256 is not None or self.agent_identity is not None


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ShardsConfig:
    """``[shards]``: one server process per endpoint; shard k is ``endpoints[k]``."""

    endpoints: tuple[Endpoint, ...]
    owners: Mapping[str, int]  # every configured service ID -> the shard that owns it (sharding.owner)

    def __len__(self) -> int:
        return len(self.endpoints)


@dataclass(frozen=True)
class ServerConfig:
    path: Path
    http: Endpoint
    services: Mapping[str, ServiceConfig]
    agent_wait: float = 5.0
    open_timeout: float = 15.0
    ping_interval: float = 8.0
    ping_timeout: float = 10.0
    handshake_timeout: float = 10.0
    max_streams_per_agent: int = 10000
    resume_seconds: float = 60.0  # how long a v2 session outlives a lost link; 0: not at all (protocol v1)
    receive_budget: int = 16 << 20  # bytes all streams of one tunnel may have in flight toward us (flow.py)
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tls: TlsConfig | None = None
    client_crl: Path | None = None  # revoked client certificates (revocation.py)
    metrics_per_service_limit: int = 100  # /metrics has per-service series up to this many services (metrics.py)
    shards: ShardsConfig | None = None  # [shards]: the fleet is split over several server processes
    shard: int | None = None  # set in the view of one shard (for_shard): which one this process is
    digest: bytes = field(default=b"", compare=False, repr=False)  # SHA-256 of the file it was loaded from

    def for_shard(self, shard: int | None) -> ServerConfig:
        """What one process runs: the whole config (no [shards]), or shard ``shard``'s view of it.

        A shard's view listens on its own ``shards.http_server_endpoints`` entry and holds only the
        services it owns; ``shards`` still knows every owner, to tell a misdirected agent where to go.
        """
        if shard is None:
            if self.shards is not None:
                raise ConfigError("[shards] is set: run one shard (--shard K) or all of them (--all-shards)")
            return self
        if self.shards is None:
            raise ConfigError(f"--shard {shard}: the config has no [shards] table")
        if not 0 <= shard < len(self.shards):
            raise ConfigError(f"--shard {shard}: not in 0..{len(self.shards) - 1} (shards.http_server_endpoints)")
        owned = {sid: s for sid, s in self.services.items() if self.shards.owners[sid] == shard}
        return replace(self, http=self.shards.endpoints[shard], services=owned, shard=shard)

    def reload_view(self, running: ServerConfig) -> ServerConfig:
        """This freshly loaded config as the process running ``running`` applies it at SIGHUP."""
        old = running.shards.endpoints if running.shards else None
        new = self.shards.endpoints if self.shards else None
        if old != new:
            raise ConfigError("[shards] added, removed or changed; that takes effect only after a restart of "
                              "every shard (and a new nginx shard map)")
        return self.for_shard(running.shard)

    def misdirected(self, service_id: str) -> str | None:
        """For a shard: why an agent for ``service_id`` must go to another shard (None: it need not)."""
        if self.shards is None or self.shard is None:
            return None
        other = self.shards.owners.get(service_id)
        if other is None or other == self.shard:
            return None
        return (f"service {service_id} belongs to shard {other} ({self.shards.endpoints[other]}), this is shard "
                f"{self.shard}: nginx's shard map is out of date (reverse_websockify_server --nginx-shard-map)")


# Example config shipped inside the package: `reverse_websockify_server --example-config`.
EXAMPLE_CONFIG = """\
http_server_endpoint = "127.0.0.1:39000"

[remote_service.LKLAFA155MA767657]
nickname = "Bus01"
local_listen_endpoint = "0.0.0.0:39034"
[remote_service.LKLAFA151NA774655]
nickname = "Bus02"
local_listen_endpoint = "0.0.0.0:39036"
"""

_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")

_TOP_KEYS = {
    "http_server_endpoint",
    "remote_service",
    "agent_wait_seconds",
    "open_timeout_seconds",
    "ping_interval_seconds",
    "ping_timeout_seconds",
    "handshake_timeout_seconds",
    "max_streams_per_agent",
    "resume_seconds",
    "receive_budget_mib",
    "trusted_proxies",
    "tls",
    "client_crl",
    "metrics_per_service_limit",
    "shards",
}
_SERVICE_KEYS = {"nickname", "local_listen_endpoint", "token", "token_sha256", "agent_identity", "shard"}
_SHARDS_KEYS = {"http_server_endpoints"}
_TLS_KEYS = {"cert", "key", "client_ca"}


def parse_endpoint(text: object, where: str) -> Endpoint:
    """Parse HOST:PORT ([v6]:PORT for IPv6); the host must be an IP address or a name."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected a string like \"127.0.0.1:39000\", got {type(text).__name__}")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT (e.g. \"0.0.0.0:39034\")")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{where}: port {port} in {text!r} is not in 1..65535")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IPv6 address") from None
    elif not re.fullmatch(r"[A-Za-z0-9.-]+", host):
        raise ConfigError(f"{where}: {host!r} is not an IP address or host name")
    return Endpoint(host, port)


def _number(table: Mapping[str, Any], key: str, default: float, where: str, *, minimum: float = 0) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value < math.inf:
        raise ConfigError(f"{where}{key}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def _unknown(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        key = extra[0] if extra[0].isprintable() else repr(extra[0])
        raise ConfigError(f"{where}{key}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _overlaps(a: Endpoint, b: Endpoint) -> bool:
    if a.port != b.port:
        return False
    wildcard = {"0.0.0.0", "::", ""}
    return a.host == b.host or a.host in wildcard or b.host in wildcard


def load(path: str | Path, *, running: ServerConfig | None = None) -> ServerConfig:
    """The config in ``path``; with ``running`` (a reload), ``running`` itself when the file holds exactly
    what it was loaded from: the usual SIGHUP renews a certificate or a CRL and leaves config.toml
    alone, and parsing 8,000 services takes 0.4 s of a core for nothing."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    digest = hashlib.sha256(raw).digest()
    if running is not None and running.digest == digest and running.path == path:
        return running
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    try:
        return replace(_build(path, data), digest=digest)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _build(path: Path, data: Mapping[str, Any]) -> ServerConfig:
    _unknown(data, _TOP_KEYS, "")
    if "http_server_endpoint" not in data:
        raise ConfigError("http_server_endpoint: missing (e.g. http_server_endpoint = \"127.0.0.1:39000\")")
    http = parse_endpoint(data["http_server_endpoint"], "http_server_endpoint")
    services_raw = data.get("remote_service", {})
    if not isinstance(services_raw, dict):
        raise ConfigError("remote_service: expected tables like [remote_service.<ID>]")
    services: dict[str, ServiceConfig] = {}
    taken: dict[int, list[tuple[str, Endpoint]]] = {}  # by port: one pass, not every pair
    _claim(taken, "http_server_endpoint", http)
    shard_endpoints = _shard_endpoints(data, taken)
    shards_explicit: dict[str, int | None] = {}
    for service_id, table in services_raw.items():
        where = f"remote_service.{service_id}."
        if not _ID.fullmatch(service_id):
            raise ConfigError(f"remote_service.{service_id!r}: the ID may only hold letters, digits and . _ ~ -")
        if not isinstance(table, dict):
            raise ConfigError(f"remote_service.{service_id}: expected a table")
        _unknown(table, _SERVICE_KEYS, where)
        if "local_listen_endpoint" not in table:
            raise ConfigError(f"{where}local_listen_endpoint: missing (e.g. \"0.0.0.0:39034\")")
        listen = parse_endpoint(table["local_listen_endpoint"], where + "local_listen_endpoint")
        _claim(taken, where + "local_listen_endpoint", listen)
        nickname = table.get("nickname", "")
        if not isinstance(nickname, str):
            raise ConfigError(f"{where}nickname: expected a string")
        token = table.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigError(f"{where}token: expected a non-empty string")
        token_sha256 = _sha256_hex(table, where)
        if token is not None and token_sha256 is not None:
            raise ConfigError(f"{where}token_sha256: give token or token_sha256, not both")
        identity = table.get("agent_identity")
        if identity is not None and not _is_identity(identity):
            raise ConfigError(f"{where}agent_identity: expected the exact CN or DNS name of the agent's "
                              f"certificate (no wildcard, no surrounding spaces), got {identity!r}")
        shard = _service_shard(table, where, shard_endpoints)
        shards_explicit[service_id] = shard
        services[service_id] = ServiceConfig(service_id, nickname, listen, token, token_sha256, identity, shard)
    shards = None
    if shard_endpoints is not None:
        shards = ShardsConfig(shard_endpoints, {sid: owner(sid, len(shard_endpoints), explicit)
                                                for sid, explicit in shards_explicit.items()})

    proxies = data.get("trusted_proxies", ["127.0.0.0/8", "::1/128"])
    if not isinstance(proxies, list):
        raise ConfigError("trusted_proxies: expected a list of addresses or networks")
    for entry in proxies:
        try:
            if not isinstance(entry, str):
                raise TypeError
            ipaddress.ip_network(entry, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"trusted_proxies: {entry!r} is not an address or network") from None

    tls = None
    if "tls" in data:
        table = data["tls"]
        if not isinstance(table, dict):
            raise ConfigError("tls: expected a table")
        _unknown(table, _TLS_KEYS, "tls.")
        for key in ("cert", "key"):
            if not isinstance(table.get(key), str):
                raise ConfigError(f"tls.{key}: missing (a path to a PEM file)")
        paths = {key: _file(table[key], path, f"tls.{key}") for key in _TLS_KEYS & set(table)}
        tls = TlsConfig(paths["cert"], paths["key"], paths.get("client_ca"))
    client_crl = _file(data["client_crl"], path, "client_crl") if "client_crl" in data else None

    return ServerConfig(
        path=path,
        http=http,
        services=services,
        agent_wait=_number(data, "agent_wait_seconds", 5.0, ""),
        open_timeout=_number(data, "open_timeout_seconds", 15.0, "", minimum=0.1),
        ping_interval=_number(data, "ping_interval_seconds", 8.0, "", minimum=0.1),
        ping_timeout=_number(data, "ping_timeout_seconds", 10.0, "", minimum=0.1),
        handshake_timeout=_number(data, "handshake_timeout_seconds", 10.0, "", minimum=0.1),
        max_streams_per_agent=_integer(data, "max_streams_per_agent", 10000, minimum=1),
        resume_seconds=_number(data, "resume_seconds", 60.0, ""),
        receive_budget=_mib(_number(data, "receive_budget_mib", 16.0, "", minimum=0.0625), "receive_budget_mib"),
        trusted_proxies=tuple(str(p) for p in proxies),
        tls=tls,
        client_crl=client_crl,
        metrics_per_service_limit=_integer(data, "metrics_per_service_limit", 100, minimum=0),
        shards=shards,
    )


def _integer(data: Mapping[str, Any], key: str, default: int, minimum: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{key}: expected {kind}, got {value!r}")
    return value


def _claim(taken: dict[int, list[tuple[str, Endpoint]]], key: str, endpoint: Endpoint) -> None:
    """Record that ``key`` listens on ``endpoint``, unless something already does."""
    for other_key, other in taken.get(endpoint.port, ()):
        if _overlaps(endpoint, other):
            raise ConfigError(f"{key}: port {endpoint.port} is already used by {other_key}")
    taken.setdefault(endpoint.port, []).append((key, endpoint))


def _shard_endpoints(data: Mapping[str, Any], taken: dict[int, list[tuple[str, Endpoint]]]) -> tuple[Endpoint, ...] | None:
    """``[shards] http_server_endpoints``: one HTTP endpoint per shard, none shared with anything else."""
    if "shards" not in data:
        return None
    table = data["shards"]
    if not isinstance(table, dict):
        raise ConfigError("shards: expected a table: [shards] http_server_endpoints = [\"127.0.0.1:39001\", ...]")
    _unknown(table, _SHARDS_KEYS, "shards.")
    raw = table.get("http_server_endpoints")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("shards.http_server_endpoints: expected a non-empty list of \"HOST:PORT\", one per shard "
                          f"(e.g. [\"127.0.0.1:39001\", \"127.0.0.1:39002\"]), got {raw!r}")
    endpoints = []
    for index, text in enumerate(raw):
        where = f"shards.http_server_endpoints[{index}]"
        endpoint = parse_endpoint(text, where)
        _claim(taken, where, endpoint)
        endpoints.append(endpoint)
    return tuple(endpoints)


def _service_shard(table: Mapping[str, Any], where: str, endpoints: tuple[Endpoint, ...] | None) -> int | None:
    if "shard" not in table:
        return None
    value = table["shard"]
    if endpoints is None:
        raise ConfigError(f"{where}shard: needs a [shards] table (http_server_endpoints, one per shard)")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(endpoints):
        raise ConfigError(f"{where}shard: expected a shard number in 0..{len(endpoints) - 1} "
                          f"(shards.http_server_endpoints has {len(endpoints)}), got {value!r}")
    return value


def _mib(value: float, where: str) -> int:
    if value > 4096:
        raise ConfigError(f"{where}: at most 4096 (MiB), got {value:g}")
    return int(value * (1 << 20))


def _file(value: object, config_path: Path, where: str) -> Path:
    """A file named in the config; a relative path is relative to the config file, as nginx's are not."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a path")
    p = Path(value)
    if not p.is_absolute():
        p = config_path.parent / p
    if not p.is_file():
        raise ConfigError(f"{where}: {value!r}: no such file")
    return p


def _is_identity(value: object) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= 253 and value.isprintable() and value == value.strip()
            and "*" not in value)


def _sha256_hex(table: Mapping[str, Any], where: str) -> bytes | None:
    value = table.get("token_sha256")
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[0-9A-Fa-f]{64}", value):
        raise ConfigError(f"{where}token_sha256: expected 64 hex digits (printf %s \"$TOKEN\" | sha256sum)")
    return bytes.fromhex(value)


# -- the agent ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentTls:
    """How the agent checks the server (wss://) and proves itself (client certificate)."""

    ca_cert: str | None = None  # None: the system's trusted CAs
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None  # the name the certificate must carry, when not the URL's host
    insecure: bool = False  # no verification at all (logged as a WARNING at every attempt)


@dataclass(frozen=True)
class AgentConfig:
    service: Endpoint  # --service: the local TCP service every stream is connected to
    url: str  # --reverse-websockify
    service_id: str  # the <ID> of .../forward_to_me/<ID>
    tls: AgentTls | None = None  # set exactly for wss:// URLs
    token: str | None = field(default=None, repr=False)
    dial_timeout: float = 10.0
    ping_interval: float = 8.0
    ping_timeout: float = 10.0
    open_timeout: float = 15.0  # the WebSocket handshake, TLS included
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    receive_budget: int = 16 << 20  # bytes all streams may have in flight toward the agent (flow.py)

    @property
    def host(self) -> str:
        """The host name of the URL."""
        return urlsplit(self.url).hostname or ""


def agent_config(
    *,
    service: str | None,
    url: str | None,
    ca_cert: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    tls_server_name: str | None = None,
    insecure: bool = False,
    token: str | None = None,
    token_file: str | None = None,
    token_env: str | None = None,
    dial_timeout: float = 10.0,
    ping_interval: float = 8.0,
    ping_timeout: float = 10.0,
    max_backoff: float = 30.0,
    receive_budget_mib: float = 16.0,
) -> AgentConfig:
    """Validate the agent's flags; every error is one line naming the flag (ConfigError)."""
    if not service:
        raise ConfigError("--service=HOST:PORT is required")
    if not url:
        raise ConfigError("--reverse-websockify=URL is required")
    endpoint = parse_endpoint(service, "--service")
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--reverse-websockify: {url!r} must be a ws:// or wss:// URL")
    path = unquote(parts.path)
    prefix = AGENT_PATH_PREFIX
    if not path.startswith(prefix) or len(path) == len(prefix) or "/" in path[len(prefix):]:
        raise ConfigError(f"--reverse-websockify: {url!r} must end in {prefix}<ID>")
    for name, value in (("dial-timeout", dial_timeout), ("ping-interval", ping_interval),
                        ("ping-timeout", ping_timeout), ("max-backoff", max_backoff)):
        if not 0 < value < math.inf:
            raise ConfigError(f"--{name} must be positive")
    if not 0.0625 <= receive_budget_mib <= 4096:
        raise ConfigError("--receive-budget-mib must be between 0.0625 and 4096")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"--token-file: {token_file} is empty")
    token = token or token_env or None
    tls = None
    if parts.scheme == "wss":
        if client_key and not client_cert:
            raise ConfigError("--client-key needs --client-cert")
        tls = AgentTls(ca_cert, client_cert, client_key, tls_server_name, insecure)
    else:
        for flag, value in (("client-cert", client_cert), ("client-key", client_key), ("ca-cert", ca_cert),
                            ("tls-server-name", tls_server_name)):
            if value:
                raise ConfigError(f"--{flag} needs a wss:// URL; {url!r} is plain ws://")
        if insecure:
            raise ConfigError("--insecure needs a wss:// URL")
    return AgentConfig(
        service=endpoint,
        url=url,
        service_id=path[len(prefix):],
        tls=tls,
        token=token,
        dial_timeout=dial_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        backoff_max=max_backoff,
        receive_budget=int(receive_budget_mib * (1 << 20)),
    )
