"""Certificates made the way users make them: the shipped scripts, i.e. the original README's openssl commands.

packaging/rendezvous/make-server-cert.sh is the seed's ``openssl req -x509`` with the CN as its
argument; packaging/agent/make-client-cert.sh signs a client certificate with that server key.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.programs import REPO

PACKAGING = REPO / "packaging"


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=True, **kwargs)  # type: ignore[call-overload]


def make_server_cert(directory: Path, cn: str) -> Path:
    """The seed's openssl command, through packaging/rendezvous/make-server-cert.sh."""
    _run(["bash", str(PACKAGING / "rendezvous" / "make-server-cert.sh"), cn, str(directory)])
    return directory


def make_client_cert(directory: Path, ca_dir: Path, name: str | None = None) -> Path:
    """The seed's client-certificate commands, through packaging/agent/make-client-cert.sh.

    With ``name`` (a service ID or agent name) the certificate carries it as CN and DNS name, for
    ``agent_identity = "<name>"``; without, CN=client as in the original README.
    """
    _run(["bash", str(PACKAGING / "agent" / "make-client-cert.sh"), "--ca-cert", str(ca_dir / "server.cert.pem"),
         "--ca-key", str(ca_dir / "server.key.pem"), "--out", str(directory), *([name] if name else [])])
    return directory


def agent_tls_flags(agent_dir: Path, *, client: bool = True) -> list[str]:
    """The agent's options for wss:// with what make_client_cert wrote: the CA, and (``client``) its certificate."""
    flags = [f"--ca-cert={agent_dir / 'server.cert.pem'}"]
    if client:
        flags += [f"--client-cert={agent_dir / 'client.cert.pem'}", f"--client-key={agent_dir / 'client.key.pem'}"]
    return flags


def revoke_client_cert(ca_dir: Path, cert: Path) -> Path:
    """packaging/rendezvous/revoke-client-cert.sh: revoke ``cert``, rewrite ``ca_dir``/crl.pem; returns it."""
    _run(["bash", str(PACKAGING / "rendezvous" / "revoke-client-cert.sh"), "--ca-cert", str(ca_dir / "server.cert.pem"),
         "--ca-key", str(ca_dir / "server.key.pem"), str(cert)])
    return ca_dir / "crl.pem"
