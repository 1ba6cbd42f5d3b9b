"""The packaging/ templates, checked with the real tools that will consume them.

nginx.conf is syntax-checked by nginx and then run on loopback in front of the real server (with
the shipped config.toml) and a real agent (launched with the systemd unit's ExecStart and the
example env file), over certificates made by the shipped scripts. docker-compose.yaml goes
through docker-compose; the systemd units through systemd-analyze verify/security; the scripts
through shellcheck and openssl.

The tools come from apt (.ci/run installs them): nginx docker-compose shellcheck systemd openssl.
A test skips, naming the package, only when its tool is absent.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.clients import sha256, transfer
from tests.support.ports import free_port
from tests.support.processes import Process
from tests.support.programs import AGENT_NAME, SERVER_NAME, command
from tests.support.services import Service
from tests.support.waiting import wait_for

from .tools import (AGENT_DIR, CLIENT_CERT_SCRIPT, PACKAGING, RENDEZVOUS, REVOKE_SCRIPT, SERVER_CERT_SCRIPT, cert_field,
                    need, ok, run)

AGENT_UNIT = AGENT_DIR / "reverse-websockify-agent@.service"
SERVER_UNIT = PACKAGING / "server" / "reverse-websockify-server.service"
SHARD_UNIT = PACKAGING / "server" / "reverse-websockify-server@.service"
ENV_EXAMPLE = AGENT_DIR / "agent.env.example"

SEED_IDS = ("LKLAFA155MA767657", "LKLAFA151NA774655")
NGINX_ERROR_PAGE = "<center>nginx</center>"  # nginx's own error pages; proxied answers never have it

# systemd-analyze security --threshold counts in tenths (1.5 -> 15; "1.5" is rejected). Achieved: 1.1.
SECURITY_THRESHOLD = 15


# -- certificates: the shipped scripts, run for real ------------------------------------------------


@dataclass
class Pki:
    tls: Path  # make-server-cert.sh output: server.cert.pem, server.key.pem
    agent: Path  # make-client-cert.sh --out: client.cert.pem, client.key.pem, server.cert.pem
    rogue: Path  # a client certificate signed by some other CA: nginx must refuse it


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    need("openssl")
    base = tmp_path_factory.mktemp("pki")
    tls, agent, rogue = base / "tls", base / "agent", base / "rogue"
    ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1", str(tls)], cwd=base))
    ok(run([str(CLIENT_CERT_SCRIPT), "--ca-cert", str(tls / "server.cert.pem"), "--ca-key", str(tls / "server.key.pem"),
            "--out", str(agent), "bus01"], cwd=base))
    ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1", str(rogue)], cwd=base))
    ok(run([str(CLIENT_CERT_SCRIPT), "--out", str(rogue)], cwd=rogue))
    return Pki(tls, agent, rogue)


def test_server_cert_script_needs_a_cn(tmp_path: Path) -> None:
    result = run([str(SERVER_CERT_SCRIPT)], cwd=tmp_path)
    assert result.returncode == 2
    assert "usage:" in result.stderr and "CN" in result.stderr
    assert not (tmp_path / "tls").exists()


def test_server_cert_script_defaults_to_tls_dir(tmp_path: Path) -> None:
    need("openssl")
    ok(run([str(SERVER_CERT_SCRIPT), "my.rendezvous.com"], cwd=tmp_path))
    key, cert = tmp_path / "tls" / "server.key.pem", tmp_path / "tls" / "server.cert.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    subject = cert_field(cert, "-subject", "-nameopt", "RFC2253").strip()
    assert subject == "subject=CN=my.rendezvous.com,OU=MyBusinessUnit,O=MyCompany,L=Beijing,ST=Beijing,C=CN"
    # The seed's command: self-signed, RSA 2048, ten years.
    assert cert_field(cert, "-issuer", "-nameopt", "RFC2253").strip() == subject.replace("subject=", "issuer=")
    assert "Public-Key: (2048 bit)" in cert_field(cert, "-text")
    days = ok(run(["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(3649 * 86400)]))
    assert "will not expire" in days.stdout


def test_server_cert_cn_and_modes(pki: Pki) -> None:
    assert "CN=127.0.0.1" in cert_field(pki.tls / "server.cert.pem", "-subject", "-nameopt", "RFC2253")
    assert stat.S_IMODE((pki.tls / "server.key.pem").stat().st_mode) == 0o600


def test_client_cert_chains_to_server_cert(pki: Pki) -> None:
    client = pki.agent / "client.cert.pem"
    verify = ok(run(["openssl", "verify", "-CAfile", str(pki.tls / "server.cert.pem"), str(client)]))
    assert verify.stdout.strip() == f"{client}: OK"
    assert "CN=bus01" in cert_field(client, "-subject", "-nameopt", "RFC2253")
    assert "DNS:bus01" in cert_field(client, "-ext", "subjectAltName")
    assert "TLS Web Client Authentication" in cert_field(client, "-ext", "extendedKeyUsage")
    assert "Public-Key: (4096 bit)" in cert_field(client, "-text")
    assert stat.S_IMODE((pki.agent / "client.key.pem").stat().st_mode) == 0o600
    # The agent's bundle holds the CA certificate too, but never the CA's key.
    assert (pki.agent / "server.cert.pem").read_bytes() == (pki.tls / "server.cert.pem").read_bytes()
    assert not (pki.agent / "server.key.pem").exists()
    assert not list(pki.agent.glob("*.csr")) and not list(pki.agent.glob("*.cnf"))
    # ...and a certificate from another CA does not chain.
    rogue = run(["openssl", "verify", "-CAfile", str(pki.tls / "server.cert.pem"), str(pki.rogue / "client.cert.pem")])
    assert rogue.returncode != 0


def test_client_cert_script_seed_layout(tmp_path: Path) -> None:
    """With no arguments it works like the seed's commands: in the folder holding server.*.pem."""
    need("openssl")
    ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1", "."], cwd=tmp_path))
    ok(run([str(CLIENT_CERT_SCRIPT)], cwd=tmp_path))
    assert "CN=client" in cert_field(tmp_path / "client.cert.pem", "-subject", "-nameopt", "RFC2253")
    ok(run(["openssl", "verify", "-CAfile", "server.cert.pem", "client.cert.pem"], cwd=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca", "client.cert.pem", "client.key.pem", "crl.pem", "server.cert.pem", "server.cert.srl", "server.key.pem"]
    missing = run([str(CLIENT_CERT_SCRIPT), "--ca-cert", "nope.pem"], cwd=tmp_path)
    assert missing.returncode == 2 and "nope.pem" in missing.stderr


@pytest.mark.parametrize("script", [SERVER_CERT_SCRIPT, CLIENT_CERT_SCRIPT, REVOKE_SCRIPT], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert script.read_text().startswith("#!/bin/bash\n")
    assert "set -euo pipefail" in script.read_text()
    result = run([need("shellcheck"), str(script)])
    assert result.returncode == 0 and not result.stdout + result.stderr, result.stdout + result.stderr


# -- config.toml -------------------------------------------------------------------------------------


def uncomment_optional_keys(text: str) -> str:
    """config.toml with every documented optional top-level key (not [tls], not token) switched on."""
    head, sep, tail = text.partition("\n# [tls]")
    return re.sub(r"^# (\w+ = [^#\n]*?)\s*(#.*)?$", r"\1", head, flags=re.M) + sep + tail


def deployed_config(directory: Path, pki: Pki) -> Path:
    """config.toml as deployed: next to the tls/ folder of make-server-cert.sh (client_crl = "tls/crl.pem")."""
    shutil.copytree(pki.tls, directory / "tls")
    shutil.copy(RENDEZVOUS / "config.toml", directory / "config.toml")
    return directory / "config.toml"


def test_config_toml_loads(tmp_path: Path, pki: Pki) -> None:
    result = ok(run(command(SERVER_NAME) + ["--check-config", str(deployed_config(tmp_path, pki))]))
    assert "OK, 2 services" in result.stdout
    # Without the CRL that make-server-cert.sh writes, the server says which key wants it.
    missing = run(command(SERVER_NAME) + ["--check-config", str(RENDEZVOUS / "config.toml")])
    assert missing.returncode == 2 and "client_crl" in missing.stdout + missing.stderr


def test_config_toml_documents_real_keys_and_defaults(tmp_path: Path, pki: Pki) -> None:
    from reverse_websockify.config import load

    text = (RENDEZVOUS / "config.toml").read_text()
    shipped = load(deployed_config(tmp_path, pki))
    assert shipped.http.host == "127.0.0.1" and shipped.http.port == 39000
    assert [(s.id, s.nickname, str(s.listen), s.agent_identity) for s in shipped.services.values()] == [
        ("LKLAFA155MA767657", "Bus01", "0.0.0.0:39034", "bus01"),
        ("LKLAFA151NA774655", "Bus02", "0.0.0.0:39036", "bus02")]
    # Every example service is bound to an identity, and revocations are read from make-server-cert.sh's CRL.
    assert shipped.client_crl == tmp_path / "tls" / "crl.pem"
    documented = set(re.findall(r"^# (\w+) = ", text, flags=re.M))
    assert documented >= {"agent_wait_seconds", "open_timeout_seconds", "ping_interval_seconds", "ping_timeout_seconds",
                          "handshake_timeout_seconds", "max_streams_per_agent", "trusted_proxies", "token",
                          "token_sha256", "cert", "key", "client_ca"}, documented
    # The values shown in the comments are the real defaults: switching them on changes nothing.
    optional = tmp_path / "optional.toml"
    optional.write_text(uncomment_optional_keys(text))
    assert optional.read_text().count("\n#") < text.count("\n#") - 6
    with_defaults = load(optional)
    for name in ("agent_wait", "open_timeout", "ping_interval", "ping_timeout", "handshake_timeout",
                 "max_streams_per_agent", "trusted_proxies", "services", "http", "client_crl"):
        assert getattr(with_defaults, name) == getattr(shipped, name), name
    # The default trusted_proxies cover nginx's address in the compose file (host network, proxy_pass to
    # 127.0.0.1): the X-Client-* headers it sets are believed.
    assert "127.0.0.0/8" in shipped.trusted_proxies
    # The commented [tls] table and token load as written (paths relative to the file).
    full = tmp_path / "full.toml"
    full.write_text(re.sub(r"^# (\[tls\]|cert = |key = |client_ca = |token = )", r"\1", optional.read_text(),
                           flags=re.M))
    loaded = load(full)
    assert loaded.tls is not None and loaded.tls.client_ca == tmp_path / "tls" / "server.cert.pem"
    token = loaded.services["LKLAFA155MA767657"].token
    assert token
    ok(run(command(SERVER_NAME) + ["--check-config", str(full)]))
    # ... and so does token_sha256 instead of token: the hash shown is the example token's.
    hashed = tmp_path / "hashed.toml"
    hashed.write_text(re.sub(r"^# (token_sha256 = )", r"\1", optional.read_text(), flags=re.M))
    digest = load(hashed).services["LKLAFA155MA767657"].token_sha256
    assert digest is not None and bytes(digest) == hashlib.sha256(token.encode()).digest()


# -- nginx.conf ---------------------------------------------------------------------------------------


def nginx_blocks(text: str) -> list[tuple[str, list]]:
    """A tiny nginx config parser: [(directive words..., children or None)] as nested lists."""
    tokens = re.findall(r"\"(?:\\.|[^\"])*\"|'(?:\\.|[^'])*'|#[^\n]*|[{};]|[^\s{};\"'#]+", text)
    stack: list[list] = [[]]
    words: list[str] = []
    for tok in tokens:
        if tok.startswith("#"):
            continue
        if tok == ";":
            stack[-1].append((words, None))
            words = []
        elif tok == "{":
            block: list = []
            stack[-1].append((words, block))
            stack.append(block)
            words = []
        elif tok == "}":
            assert not words, f"dangling {words} before }}"
            stack.pop()
        else:
            words.append(tok.strip("\"'"))
    assert len(stack) == 1 and not words, "unbalanced nginx.conf"
    return stack[0]


def directives(block: list, name: str) -> list[list[str]]:
    return [words[1:] for words, _ in block if words and words[0] == name]


def servers() -> tuple[list, list]:
    top = nginx_blocks((RENDEZVOUS / "nginx.conf").read_text())
    found = [children for words, children in top if words == ["server"]]
    tls = [b for b in found if any("ssl" in args for args in directives(b, "listen"))]
    plain = [b for b in found if b not in tls]
    assert len(tls) == 1 and len(plain) == 1, "expected one 443 ssl server block and one plain one"
    return tls[0], plain[0]


def locations(server: list) -> dict[str, list]:
    return {" ".join(words[1:]): children for words, children in server if words and words[0] == "location"}


def seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u or "s"] for n, u in re.findall(r"(\d+)([smhd]?)", value))


def size(value: str) -> int:
    """nginx's size syntax: 64k, 1m, 4096."""
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", value).groups()
    return int(number) << {"": 0, "k": 10, "m": 20}[unit.lower()]


def test_nginx_conf_shape() -> None:
    tls, plain = servers()
    assert directives(tls, "listen") == [["443", "ssl", "default_server"]]
    assert directives(tls, "ssl_verify_client") == [["on"]]
    assert directives(tls, "ssl_client_certificate") == [["/tls/server.cert.pem"]]
    assert directives(tls, "ssl_certificate") == [["/tls/server.cert.pem"]]
    assert directives(tls, "ssl_certificate_key") == [["/tls/server.key.pem"]]
    # make-server-cert.sh's and revoke-client-cert.sh's CRL, in the same /tls/ mount (docker-compose.yaml).
    assert directives(tls, "ssl_crl") == [["/tls/crl.pem"]]
    protocols = set(directives(tls, "ssl_protocols")[0])
    assert protocols and protocols <= {"TLSv1.2", "TLSv1.3"}
    assert directives(tls, "client_max_body_size") == [["0"]]
    locs = locations(tls)
    assert set(locs) == {"/forward_to_me/", "= /forward_to_me", "/"}, "443 serves only /forward_to_me/"
    assert directives(locs["/"], "return") == directives(locs["= /forward_to_me"], "return") == [["404"]]
    forward = locs["/forward_to_me/"]
    assert directives(forward, "proxy_pass") == [["http://127.0.0.1:39000"]]
    headers = {args[0]: args[1] for args in directives(forward, "proxy_set_header")}
    assert headers["Upgrade"] == "$http_upgrade" and headers["X-Real-Ip"] == "$remote_addr"
    # The verified certificate for agent_identity and client_crl (the names the server reads).
    assert headers["X-Client-Verify"] == "$ssl_client_verify"
    assert headers["X-Client-Cert"] == "$ssl_client_escaped_cert"
    assert headers["Connection"] in ("upgrade", "$connection_upgrade") and headers["Host"] == "$http_host"
    assert directives(forward, "proxy_http_version") == [["1.1"]]
    assert directives(forward, "proxy_buffering") == [["off"]]
    # nginx relays a tunnel through one proxy_buffer_size buffer each way: the 4 KiB default halves wss throughput
    assert [size(v[0]) for v in directives(forward, "proxy_buffer_size")] == [64 << 10]
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(directives(forward, timeout)[0][0]) >= 3600, timeout

    assert directives(plain, "listen") == [["80"]]
    locs = locations(plain)
    assert set(locs) == {"= /", "= /metrics", "= /healthz", "/ready/", "/"}
    for path in ("= /", "= /metrics", "= /healthz", "/ready/"):
        assert directives(locs[path], "proxy_pass") == [["http://127.0.0.1:39000"]], path
    assert directives(locs["/"], "return") == [["404"]]


@dataclass
class Nginx:
    prefix: Path
    main_conf: Path
    https_port: int
    http_port: int


def prepare_nginx(base: Path, pki: Pki, upstream_port: int) -> Nginx:
    """The shipped nginx.conf as conf.d/default.conf of a minimal main config, on loopback ports."""
    text = (RENDEZVOUS / "nginx.conf").read_text()
    https_port, http_port = free_port(), free_port()
    text, n443 = re.subn(r"\blisten\s+443\s", f"listen 127.0.0.1:{https_port} ", text)
    text, n80 = re.subn(r"\blisten\s+80\s*;", f"listen 127.0.0.1:{http_port};", text)
    text, nup = re.subn(r"http://127\.0\.0\.1:39000\b", f"http://127.0.0.1:{upstream_port}", text)
    text, ntls = re.subn(r"(?<=\s)/tls/", f"{pki.tls}/", text)
    assert (n443, n80, ntls) == (1, 1, 4) and nup >= 5, (n443, n80, ntls, nup)
    (base / "conf.d").mkdir()
    (base / "conf.d" / "default.conf").write_text(text)
    temp = "\n".join(f"    {kind}_temp_path {base}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # Like the stock image's /etc/nginx/nginx.conf: default.conf is included in the http context.
    main = base / "nginx.conf"
    main.write_text(f"""daemon off;
worker_processes 1;
pid {base}/nginx.pid;
error_log {base}/error.log notice;
events {{ worker_connections 256; }}
http {{
    access_log {base}/access.log;
{temp}
    include {base}/conf.d/*.conf;
}}
""")
    return Nginx(base, main, https_port, http_port)


def test_nginx_t(tmp_path: Path, pki: Pki) -> None:
    nginx = prepare_nginx(tmp_path, pki, free_port())
    result = run([need("nginx"), "-t", "-p", str(tmp_path), "-c", str(nginx.main_conf)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "syntax is ok" in output and "test is successful" in output
    assert "[warn]" not in output and "[emerg]" not in output, output


SHARDS_CONF = RENDEZVOUS / "nginx-shards.conf"
SHARD_MAP_INCLUDE = "include /etc/nginx/reverse-websockify-shard-map.conf;"


def sharded_config(directory: Path, pki: Pki) -> Path:
    """The shipped config.toml with a [shards] table of two loopback shards (the seed IDs fall on both)."""
    path = deployed_config(directory, pki)
    text = path.read_text().replace("\n[remote_service.", "\n[shards]\nhttp_server_endpoints = "
                                    '["127.0.0.1:39001", "127.0.0.1:39002"]\n\n[remote_service.', 1)
    path.write_text(text)
    return path


def test_nginx_shards_conf_is_nginx_conf_but_for_the_routing(tmp_path: Path, pki: Pki) -> None:
    """Same TLS, client certificates, headers and timeouts; agents to $reverse_websockify_shard; /shard/<K>/."""
    single, sharded = nginx_blocks((RENDEZVOUS / "nginx.conf").read_text()), nginx_blocks(SHARDS_CONF.read_text())
    assert [words for words, _ in sharded if words[0] == "include"] == [SHARD_MAP_INCLUDE[:-1].split()]
    servers_single = [children for words, children in single if words == ["server"]]
    servers_sharded = [children for words, children in sharded if words == ["server"]]
    tls_single, tls_sharded = servers_single[0], servers_sharded[0]
    assert [d for d in tls_sharded if d[0][0] != "location"] == [d for d in tls_single if d[0][0] != "location"]
    forward_single, forward_sharded = locations(tls_single)["/forward_to_me/"], locations(tls_sharded)["/forward_to_me/"]
    assert directives(forward_sharded, "proxy_pass") == [["http://$reverse_websockify_shard"]]
    assert [d for d in forward_sharded if d[0][0] != "proxy_pass"] == [d for d in forward_single if d[0][0] != "proxy_pass"]
    plain = locations(servers_sharded[1])
    assert set(plain) == set(locations(servers_single[1])) | {"= /shards", "~ ^/shard/(\\d+)(/.*)$"}
    assert directives(plain["~ ^/shard/(\\d+)(/.*)$"], "proxy_pass") == [["http://reverse_websockify_shard_$1$2"]]
    for path in ("= /", "= /metrics", "= /healthz", "/ready/", "= /shards"):
        assert directives(plain[path], "proxy_pass") == [["http://127.0.0.1:39000"]], path


def test_nginx_t_shards(tmp_path: Path, pki: Pki) -> None:
    """nginx-shards.conf with the map generated from a sharded config.toml passes nginx -t."""
    config = sharded_config(tmp_path, pki)
    shard_map = ok(run(command(SERVER_NAME) + [str(config), "--nginx-shard-map"])).stdout
    assert "upstream reverse_websockify_shard_1 { server 127.0.0.1:39002; }" in shard_map
    assert "    /forward_to_me/LKLAFA151NA774655 reverse_websockify_shard_1;" in shard_map
    (tmp_path / "nginx-shard-map.conf").write_text(shard_map)
    base = tmp_path / "nginx"
    base.mkdir()
    nginx = prepare_nginx(base, pki, free_port())
    site = SHARDS_CONF.read_text().replace(SHARD_MAP_INCLUDE, f"include {tmp_path / 'nginx-shard-map.conf'};")
    site = re.sub(r"\blisten\s+443\s", f"listen 127.0.0.1:{nginx.https_port} ", site)
    site = re.sub(r"\blisten\s+80\s*;", f"listen 127.0.0.1:{nginx.http_port};", site)
    (base / "conf.d" / "default.conf").write_text(re.sub(r"(?<=\s)/tls/", f"{pki.tls}/", site))
    result = run([need("nginx"), "-t", "-p", str(base), "-c", str(nginx.main_conf)])
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "test is successful" in output, output
    assert "[warn]" not in output and "[emerg]" not in output, output


def test_nginx_shard_map_scales(tmp_path: Path) -> None:
    """10,000 services with 128-character IDs: the map carries the hash sizes nginx then needs."""
    from reverse_websockify.config import load
    from reverse_websockify.nginxmap import render

    lines = ['http_server_endpoint = "127.0.0.1:39000"',
             '[shards]', 'http_server_endpoints = ["127.0.0.1:39001", "127.0.0.1:39002", "127.0.0.1:39003"]']
    for i in range(10000):
        lines += [f"[remote_service.{'X' * 120}{i:08d}]", f'local_listen_endpoint = "127.0.0.1:{40000 + i}"']
    (tmp_path / "config.toml").write_text("\n".join(lines) + "\n")
    (tmp_path / "map.conf").write_text(render(load(tmp_path / "config.toml")))
    (tmp_path / "nginx.conf").write_text(f"""daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log notice;
events {{ worker_connections 64; }}
http {{
    include {tmp_path}/map.conf;
    server {{ listen 127.0.0.1:{free_port()}; location / {{ proxy_pass http://$reverse_websockify_shard; }} }}
}}
""")
    result = run([need("nginx"), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "[warn]" not in output, output


# -- the running stack: server (shipped config) + nginx (shipped conf) + agent (unit + env file) ------


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def agent_argv_from_unit(env: dict[str, str]) -> list[str]:
    """The unit's ExecStart, expanded like systemd does for ${VAR} (each one a single word)."""
    exec_start = read_unit(AGENT_UNIT)["Service"]["ExecStart"][0]
    words = shlex.split(exec_start)
    assert words[0] == "/usr/local/bin/" + AGENT_NAME
    expanded = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], w) for w in words[1:]]
    return command(AGENT_NAME) + expanded


MDWE_LAUNCHER = """
import ctypes, os, sys
# PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): what MemoryDenyWriteExecute=yes does, inherited across exec.
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(f"PR_SET_MDWE: errno {ctypes.get_errno()}")
os.execvp(sys.argv[1], sys.argv[1:])
"""


def mdwe_supported() -> bool:
    """Linux >= 6.3 can impose MemoryDenyWriteExecute on a process without systemd."""
    probe = run([sys.executable, "-c", MDWE_LAUNCHER, "true"])
    return probe.returncode == 0


@dataclass
class Stack:
    nginx: Nginx
    pki: Pki
    server: Process
    agent: Process
    echo: Service
    user_port: int
    service_id: str
    mdwe: bool


def nginx_running(proc: subprocess.Popen, port: int, log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"nginx exited with {proc.returncode}: {log.read_text(errors='replace')}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Stack]:
    nginx_bin = need("nginx")
    base = tmp_path_factory.mktemp("stack")
    # The shipped config.toml, on loopback ports, with its (commented) token switched on; its Bus01 is
    # bound to agent_identity "bus01", the name in pki.agent's certificate.
    upstream, bus01, bus02 = free_port(), free_port(), free_port()
    config = (RENDEZVOUS / "config.toml").read_text()
    config, n = re.subn(r'"127\.0\.0\.1:39000"', f'"127.0.0.1:{upstream}"', config)
    assert n == 1
    config = config.replace('"0.0.0.0:39034"', f'"127.0.0.1:{bus01}"')
    config = config.replace('"0.0.0.0:39036"', f'"127.0.0.1:{bus02}"')
    config, n = re.subn(r'^# token = "[^"]*"', 'token = "s3cret-token"', config, flags=re.M)
    assert n == 1
    (base / "config.toml").write_text(config)
    shutil.copytree(pki.tls, base / "tls")  # client_crl = "tls/crl.pem"
    server = Process(command(SERVER_NAME) + [str(base / "config.toml")], base / "server.log")
    echo = Service()
    (base / "nginx").mkdir()
    nginx = prepare_nginx(base / "nginx", pki, upstream)
    nginx_log = base / "nginx.out"
    nginx_proc = subprocess.Popen([nginx_bin, "-p", str(nginx.prefix), "-c", str(nginx.main_conf)],
                                  stdout=open(nginx_log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    agent = None
    try:
        wait_for(lambda: nginx_running(nginx_proc, nginx.http_port, nginx_log), 15, "nginx to listen")
        wait_for(lambda: get(nginx.http_port, "/healthz")[0] == 200, 15, f"server behind nginx: {server.log()}")
        # The agent exactly as the systemd unit starts it, its environment from agent.env.example.
        env = read_env_file(ENV_EXAMPLE)
        env.update(SERVICE=f"127.0.0.1:{echo.port}",
                   URL=f"wss://127.0.0.1:{nginx.https_port}/forward_to_me/{SEED_IDS[0]}",
                   CLIENT_CERT=str(pki.agent / "client.cert.pem"), CLIENT_KEY=str(pki.agent / "client.key.pem"),
                   CA_CERT=str(pki.agent / "server.cert.pem"))
        unit_tmpdir = base / "agent-tmp"  # the unit's CacheDirectory= TMPDIR
        unit_tmpdir.mkdir()
        mdwe = mdwe_supported()
        argv = agent_argv_from_unit(env)
        if mdwe:
            argv = [sys.executable, "-c", MDWE_LAUNCHER] + argv
        agent = Process(argv, base / "agent.log",
                        env={**os.environ, "TMPDIR": str(unit_tmpdir), "REVERSE_WEBSOCKIFY_TOKEN": "s3cret-token"})
        yield Stack(nginx, pki, server, agent, echo, bus01, SEED_IDS[0], mdwe)
    finally:
        if agent is not None:
            agent.stop()
        if nginx_proc.poll() is None:
            nginx_proc.send_signal(signal.SIGQUIT)  # graceful shutdown of master and workers
            try:
                nginx_proc.wait(10)
            except subprocess.TimeoutExpired:
                nginx_proc.kill()
                nginx_proc.wait(5)
        server.stop()
        echo.close()


def get(port: int, path: str, context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, str]:
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    except OSError:
        return 0, ""
    finally:
        conn.close()


def tls_client(pki: Pki, cert_dir: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.tls / "server.cert.pem"))
    context.check_hostname = False  # the seed's certificate names 127.0.0.1 in its CN only
    if cert_dir is not None:
        context.load_cert_chain(str(cert_dir / "client.cert.pem"), str(cert_dir / "client.key.pem"))
    return context


def test_https_refuses_clients_without_certificate(stack: Stack) -> None:
    status, body = get(stack.nginx.https_port, "/healthz", tls_client(stack.pki, None))
    assert status == 400 and "No required SSL certificate was sent" in body
    status, body = get(stack.nginx.https_port, f"/forward_to_me/{stack.service_id}", tls_client(stack.pki, None))
    assert status == 400 and "No required SSL certificate was sent" in body


def test_https_refuses_certificate_from_another_ca(stack: Stack) -> None:
    status, body = get(stack.nginx.https_port, "/healthz", tls_client(stack.pki, stack.pki.rogue))
    assert status == 400 and "SSL certificate error" in body, (status, body)


def test_https_serves_only_forward_to_me(stack: Stack) -> None:
    context = tls_client(stack.pki, stack.pki.agent)
    for path in ("/", "/healthz", "/metrics", f"/ready/{stack.service_id}", "/forward_to_me"):
        status, body = get(stack.nginx.https_port, path, context)
        assert status == 404 and NGINX_ERROR_PAGE in body, (path, status, body)
    # Proxied to the server, which wants a WebSocket there (426 is the server's answer, not nginx's).
    status, body = get(stack.nginx.https_port, f"/forward_to_me/{stack.service_id}", context)
    assert status == 426 and NGINX_ERROR_PAGE not in body, (status, body)
    status, body = get(stack.nginx.https_port, "/forward_to_me/NO-SUCH-ID", context)
    assert status == 404 and "unknown service ID" in body


def test_plain_block_proxies_status_health_ready_metrics(stack: Stack) -> None:
    port = stack.nginx.http_port
    status, body = get(port, "/", headers={"Accept": "application/json"})
    assert status == 200 and set(json.loads(body)) == set(SEED_IDS)
    status, body = get(port, "/", headers={"Accept": "text/html"})
    assert status == 200 and "Bus01" in body
    assert get(port, "/healthz") == (200, "ok\n")
    status, body = get(port, f"/ready/{SEED_IDS[1]}")
    assert status == 503 and NGINX_ERROR_PAGE not in body  # no agent for Bus02: the server's answer
    status, body = get(port, "/metrics")
    assert NGINX_ERROR_PAGE not in body, f"/metrics was not proxied: {status} {body}"
    for path in (f"/forward_to_me/{stack.service_id}", "/index.html", "/healthz/x"):
        status, body = get(port, path)
        assert status == 404 and NGINX_ERROR_PAGE in body, (path, status, body)


def test_agent_from_unit_tunnels_through_nginx(stack: Stack) -> None:
    """The agent started with the unit's ExecStart + env file attaches through nginx (mTLS, token)."""
    def attached() -> bool:
        if stack.agent.proc.poll() is not None:
            raise AssertionError(f"agent exited {stack.agent.proc.returncode}: {stack.agent.log()}")
        return get(stack.nginx.http_port, f"/ready/{stack.service_id}")[0] == 200

    wait_for(attached, 20, f"agent to attach through nginx:\n{stack.agent.log()[-3000:]}\n{stack.server.log()[-3000:]}")
    payload = os.urandom(3 << 20)
    assert sha256(transfer(stack.user_port, payload)) == sha256(payload)
    status = json.loads(get(stack.nginx.http_port, "/", headers={"Accept": "application/json"})[1])
    assert status[stack.service_id]["connected"] is True
    if not stack.mdwe:
        pytest.skip("ran without MemoryDenyWriteExecute: this kernel has no PR_SET_MDWE (Linux >= 6.3)")


# -- docker-compose.yaml --------------------------------------------------------------------------------


def yaml_to_data(compose: str, text: str) -> dict:
    """Parse YAML with PyYAML: ours if installed, else the one docker-compose (v1, Python) runs on."""
    try:
        import yaml
    except ImportError:
        interpreter = Path(compose).read_text(errors="replace").splitlines()[0].removeprefix("#!").split()
        if not interpreter or "python" not in interpreter[-1]:
            pytest.skip("no PyYAML to read `docker-compose config` (pip install pyyaml)")
        dump = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
        return json.loads(ok(run(interpreter + ["-c", dump], input=text)).stdout)
    return yaml.safe_load(text)


def test_docker_compose_config(tmp_path: Path) -> None:
    compose = need("docker-compose")
    shutil.copy(RENDEZVOUS / "docker-compose.yaml", tmp_path)
    env = {**os.environ, "PWD": str(tmp_path)}
    args = [compose, "-f", str(tmp_path / "docker-compose.yaml")]
    quiet = run(args + ["config", "-q"], cwd=tmp_path, env=env)
    assert quiet.returncode == 0 and not quiet.stdout, quiet.stdout + quiet.stderr
    config = yaml_to_data(compose, ok(run(args + ["config"], cwd=tmp_path, env=env)).stdout)
    nginx, server = config["services"]["nginx"], config["services"]["reverse_websockify_server"]
    assert set(config["services"]) == {"nginx", "reverse_websockify_server"}
    for service in (nginx, server):
        assert service["image"] == "nginx:latest"
        assert service["network_mode"] == "host"
        assert service["restart"] == "always"
    assert sorted(nginx["volumes"]) == sorted([f"{tmp_path}/nginx.conf:/etc/nginx/conf.d/default.conf:ro",
                                               f"{tmp_path}/tls:/tls:ro"])
    assert [v.rsplit(":", 1)[0] if v.count(":") > 1 else v for v in server["volumes"]] == [f"{tmp_path}:/project"]
    assert server["command"] == ["/project/reverse_websockify_server", "/project/config.toml"]
    assert server["stop_signal"] == "SIGTERM"
    assert server["init"] is True
    assert server["environment"]["TMPDIR"] == "/tmp"
    tmpfs = {entry.split(":", 1)[0]: entry.partition(":")[2].split(",") for entry in server["tmpfs"]}
    assert "exec" in tmpfs["/tmp"] and "noexec" not in tmpfs["/tmp"], tmpfs


def test_docker_compose_shards_override(tmp_path: Path) -> None:
    """docker-compose.shards.yaml on top of docker-compose.yaml: nginx gets nginx-shards.conf and the map."""
    compose = need("docker-compose")
    for name in ("docker-compose.yaml", "docker-compose.shards.yaml"):
        shutil.copy(RENDEZVOUS / name, tmp_path)
    env = {**os.environ, "PWD": str(tmp_path)}
    args = [compose, "-f", str(tmp_path / "docker-compose.yaml"), "-f", str(tmp_path / "docker-compose.shards.yaml")]
    config = yaml_to_data(compose, ok(run(args + ["config"], cwd=tmp_path, env=env)).stdout)
    assert sorted(config["services"]["nginx"]["volumes"]) == sorted([
        f"{tmp_path}/nginx-shards.conf:/etc/nginx/conf.d/default.conf:ro",
        f"{tmp_path}/nginx-shard-map.conf:/etc/nginx/reverse-websockify-shard-map.conf:ro",
        f"{tmp_path}/tls:/tls:ro"])
    # The server is unchanged: with [shards] in config.toml, its plain command runs every shard.
    assert config["services"]["reverse_websockify_server"]["command"] == [
        "/project/reverse_websockify_server", "/project/config.toml"]


# -- systemd units --------------------------------------------------------------------------------------


UNITS = [
    pytest.param(AGENT_UNIT, "reverse-websockify-agent@bus01.service", id="agent@bus01"),
    pytest.param(SERVER_UNIT, "reverse-websockify-server.service", id="server"),
    pytest.param(SHARD_UNIT, "reverse-websockify-server@0.service", id="server@0"),
]


def unit_for_verify(tmp_path: Path, unit: Path) -> Path:
    """A copy of the unit whose /usr/local/bin executables exist (fake ones in tmp_path/bin).

    `systemd-analyze verify` fails a unit whose ExecStart binary is missing; `--root=DIR` would
    instead need a whole OS tree (sysinit.target, /usr/bin/find, ...). So the path is rewritten.
    """
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name in (AGENT_NAME, SERVER_NAME):
        fake = bindir / name
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    text, n = re.subn(r"/usr/local/bin/", f"{bindir}/", unit.read_text())
    assert n >= 1
    copy = tmp_path / unit.name
    copy.write_text(text)
    return copy


@pytest.mark.parametrize("unit, instance", UNITS)
def test_systemd_analyze_verify(tmp_path: Path, unit: Path, instance: str) -> None:
    analyze = need("systemd-analyze")
    unit_for_verify(tmp_path, unit)
    # verify exits 0 on warnings (unknown keys, bad values): any output at all is a failure.
    # A template is verified through an instance name, the template file next to it.
    result = run([analyze, "verify", "--man=no", str(tmp_path / instance)])
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_analyze_verify_does_complain(tmp_path: Path) -> None:
    """The check above can fail: verify reports a misspelt key on stderr."""
    copy = unit_for_verify(tmp_path, SERVER_UNIT)
    copy.write_text(copy.read_text().replace("RestartSec=5", "RestartSec=5\nRestrictAddresFamilies=AF_INET"))
    result = run([need("systemd-analyze"), "verify", "--man=no", str(copy)])
    assert "RestrictAddresFamilies" in result.stdout + result.stderr


@pytest.mark.parametrize("unit, instance", UNITS)
def test_systemd_analyze_security(tmp_path: Path, unit: Path, instance: str) -> None:
    analyze = need("systemd-analyze")
    unit_for_verify(tmp_path, unit)
    result = run([analyze, "security", "--offline=true", f"--threshold={SECURITY_THRESHOLD}", "--no-pager",
                  str(tmp_path / instance)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d)", output).group(1))
    assert score <= SECURITY_THRESHOLD / 10, output


@pytest.mark.parametrize("unit", [AGENT_UNIT, SERVER_UNIT, SHARD_UNIT], ids=lambda p: p.name)
def test_systemd_unit_settings(unit: Path) -> None:
    sections = read_unit(unit)
    service = {key: values[-1] for key, values in sections["Service"].items()}
    assert sections["Unit"]["StartLimitIntervalSec"] == ["0"]
    assert (service["Restart"], service["RestartSec"]) == ("always", "5")
    assert (service["KillSignal"], service["TimeoutStopSec"]) == ("SIGTERM", "15")
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"
    assert sections["Service"]["SystemCallFilter"][0] == "@system-service"
    assert service["CapabilityBoundingSet"] == ""
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "DynamicUser", "MemoryDenyWriteExecute"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    # PyInstaller unpacks into $TMPDIR and dlopen()s from it: it must be a directory the unit creates
    # and that is not noexec; /run (%t) is noexec on Debian/Ubuntu, so it is the cache directory.
    tmpdir = next(v for v in sections["Service"]["Environment"] if v.startswith("TMPDIR="))[len("TMPDIR="):]
    assert tmpdir == "%C/" + service["CacheDirectory"]
    assert "NoExecPaths" not in service and "TemporaryFileSystem" not in service
    assert "ExecPaths" not in service
    if unit == AGENT_UNIT:
        assert sections["Service"]["EnvironmentFile"] == ["/etc/reverse-websockify/agent-%i.env"]
        assert service["ExecStart"] == (
            "/usr/local/bin/reverse_websockify_agent_service_side --service=${SERVICE} --reverse-websockify=${URL} "
            "--client-cert=${CLIENT_CERT} --client-key=${CLIENT_KEY} --ca-cert=${CA_CERT}")
        used = set(re.findall(r"\$\{(\w+)\}", service["ExecStart"]))
        documented = set(re.findall(r"^#?([A-Z_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
        assert used | {"REVERSE_WEBSOCKIFY_TOKEN"} <= documented
    elif unit == SHARD_UNIT:
        assert service["ExecStart"] == ("/usr/local/bin/reverse_websockify_server /etc/reverse-websockify/config.toml "
                                        "--shard %i")
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert service["CacheDirectory"] == "reverse-websockify-server-%i"  # no shard cleans another's _MEI*
        # Otherwise the server unit, line for line.
        ours = {k: v for k, v in read_unit(SERVER_UNIT)["Service"].items() if k not in ("ExecStart", "CacheDirectory",
                                                                                       "Environment")}
        assert {k: v for k, v in sections["Service"].items() if k in ours} == ours
    else:
        assert service["ExecStart"] == "/usr/local/bin/reverse_websockify_server /etc/reverse-websockify/config.toml"
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_sysusers_snippet(tmp_path: Path) -> None:
    sysusers = need("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    ok(run([sysusers, f"--root={tmp_path}", str(AGENT_DIR / "reverse-websockify.sysusers.conf")]))
    passwd = (tmp_path / "etc" / "passwd").read_text()
    user = [line for line in passwd.splitlines() if line.startswith("reverse-websockify:")]
    assert user and user[0].endswith(":/usr/sbin/nologin")
    assert "reverse-websockify:" in (tmp_path / "etc" / "group").read_text()
    # The units run as that user when it exists.
    for unit in (AGENT_UNIT, SERVER_UNIT, SHARD_UNIT):
        service = read_unit(unit)["Service"]
        assert service["User"] == ["reverse-websockify"] and service["Group"] == ["reverse-websockify"]
