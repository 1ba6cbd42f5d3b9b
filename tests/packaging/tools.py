"""What the packaging tests share: where the templates are, and running the real tools on them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
RENDEZVOUS = PACKAGING / "rendezvous"
AGENT_DIR = PACKAGING / "agent"
SERVER_CERT_SCRIPT = RENDEZVOUS / "make-server-cert.sh"
REVOKE_SCRIPT = RENDEZVOUS / "revoke-client-cert.sh"
CLIENT_CERT_SCRIPT = AGENT_DIR / "make-client-cert.sh"

APT = {"nginx": "nginx", "docker-compose": "docker-compose", "shellcheck": "shellcheck",
       "systemd-analyze": "systemd", "systemd-sysusers": "systemd", "openssl": "openssl"}


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install -y {APT[tool]})")
    return path


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("timeout", 60)
    return subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, \
        f"{shlex.join(result.args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def cert_field(cert: Path, *args: str) -> str:
    return ok(run([need("openssl"), "x509", "-in", str(cert), "-noout", *args])).stdout
