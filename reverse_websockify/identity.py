"""Who an agent's client certificate says it is, and whether that is who a service is bound to.

``[remote_service.<ID>] agent_identity = "bus02"`` is matched against the
certificate's subject CN and each of its DNS subjectAltNames: exactly, ASCII
case-insensitively (DNS names are not case-sensitive), with no wildcard or
substring rule, so a certificate for ``*.fleet`` or ``bus0`` never matches
``bus02``. Nothing here does I/O: the certificate arrives either from the TLS
handshake ([tls] mode, ``ssl``'s getpeercert() dict) or from nginx, which
verified it and passes it as URL-encoded PEM (``$ssl_client_escaped_cert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping
from urllib.parse import unquote

VERIFY_HEADER = "X-Client-Verify"
"""nginx's ``$ssl_client_verify``: SUCCESS when it verified the client's certificate."""
CERT_HEADER = "X-Client-Cert"
"""nginx's ``$ssl_client_escaped_cert``: the verified certificate, URL-encoded PEM."""


class CertificateError(ValueError):
    """The certificate passed by the proxy cannot be read."""


@dataclass(frozen=True)
class AgentIdentity:
    """The names a verified client certificate carries, and what revocation needs to find it."""

    common_names: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    serial: int | None = None
    issuer: str = ""  # RFC 4514 string, for logs
    source: str = ""  # "tls" or "proxy", for logs

    @property
    def names(self) -> tuple[str, ...]:
        return self.common_names + tuple(n for n in self.dns_names if n not in self.common_names)

    def matches(self, wanted: str) -> bool:
        """Exact, ASCII case-insensitive comparison with the CN and every DNS subjectAltName."""
        folded = _fold(wanted)
        return any(_fold(name) == folded for name in self.names)

    def __str__(self) -> str:
        names = ", ".join(self.names) or "(no CN or DNS name)"
        serial = f", serial {self.serial:X}" if self.serial is not None else ""
        return f"{names}{serial}"


def _fold(name: str) -> str:
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def from_certificate(data: bytes, source: str) -> AgentIdentity:
    """From a verified certificate, PEM (as nginx passes it) or DER (``getpeercert(binary_form=True)``)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = (x509.load_pem_x509_certificate(data) if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise CertificateError(f"not a certificate: {exc}") from None
    common_names = tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns_names = ()
    except ValueError as exc:  # a malformed extension
        raise CertificateError(f"unreadable subjectAltName: {exc}") from None
    return AgentIdentity(common_names, dns_names, cert.serial_number, cert.issuer.rfc4514_string(), source)


def from_proxy_headers(headers: Mapping[str, str]) -> tuple[AgentIdentity | None, str]:
    """The identity a trusted proxy (nginx) verified, or None and why there is none."""
    try:
        verify = headers.get(VERIFY_HEADER)
        cert = headers.get(CERT_HEADER)
    except LookupError:  # websockets' MultipleValuesError: nginx sets each exactly once
        return None, f"{VERIFY_HEADER} or {CERT_HEADER} sent more than once"
    if verify is None and cert is None:
        return None, "the proxy passed no client certificate (X-Client-Verify/X-Client-Cert; see nginx.conf)"
    if verify != "SUCCESS":
        return None, f"the proxy did not verify a client certificate ({VERIFY_HEADER}: {(verify or '')[:80]!r})"
    if not cert:
        return None, f"the proxy verified a certificate but passed none in {CERT_HEADER}"
    try:
        return from_certificate(unquote(cert).encode("ascii", "replace"), "proxy"), ""
    except CertificateError as exc:
        return None, f"{CERT_HEADER}: {exc}"
