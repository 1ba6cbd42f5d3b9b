"""Revoked client certificates, from the CRL the operator maintains (revoke-client-cert.sh).

nginx (``ssl_crl``) refuses a revoked certificate at the next handshake, but a
reload leaves the WebSockets already open on the old workers; so the server
reads the same CRL at start and on every SIGHUP, refuses a revoked certificate
at attach and cuts off an attached agent whose certificate has just been
revoked. The file is the operator's own, so it is trusted as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .identity import AgentIdentity

_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class RevocationListError(Exception):
    """The CRL file cannot be read; one line for the user."""


@dataclass(frozen=True)
class RevocationList:
    """Serial numbers revoked by each issuer (RFC 4514 name) of the CRL file; empty without a file."""

    path: Path | None = None
    revoked: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def is_revoked(self, identity: AgentIdentity | None) -> bool:
        if identity is None or identity.serial is None:
            return False
        return (identity.issuer, identity.serial) in self.revoked

    def __len__(self) -> int:
        return len(self.revoked)


def load_revocation_list(path: Path | None, where: str) -> RevocationList:
    """Every CRL in ``path`` (PEM, one or more, or DER); ``where`` names the config key in errors."""
    if path is None:
        return RevocationList()
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RevocationListError(f"{where}: {path}: {exc.strerror or exc}") from None
    try:
        blocks = _PEM_CRL.findall(data)
        crls = [x509.load_pem_x509_crl(b) for b in blocks] if blocks else [x509.load_der_x509_crl(data)]
    except ValueError as exc:
        raise RevocationListError(f"{where}: {path}: not a CRL (PEM or DER): {exc}") from None
    revoked = {(crl.issuer.rfc4514_string(), entry.serial_number) for crl in crls for entry in crl}
    return RevocationList(path, frozenset(revoked))
