"""SSLContext builders and the agent's check of the server's name.

The seed deployment's server certificate carries the server's name or IP
address only in the subject CN, with no subjectAltName. OpenSSL falls back to
the CN for host names but never for IP addresses, so for an IP we check the
name ourselves, right after the TLS handshake and before a single byte of
HTTP (path, token) goes out: the chain is still verified against --ca-cert.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AgentTls


class TlsSetupError(Exception):
    """A certificate or key file cannot be used; one line for the user."""


def _load(action: str, where: str, path: Path | str, load: Any) -> None:
    try:
        load()
    except FileNotFoundError:
        raise TlsSetupError(f"{where}: {path}: no such file") from None
    except ssl.SSLError as exc:
        raise TlsSetupError(f"{where}: {path}: cannot {action}: {exc.reason or exc}") from None
    except OSError as exc:
        raise TlsSetupError(f"{where}: {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class AgentTlsSetup:
    """The agent's SSLContext, and the IP address it checks itself (Python cannot, see ``name_mismatch``)."""

    context: ssl.SSLContext
    server_hostname: str | None  # SNI and certificate name, when not the URL's host (never an IP)
    check_name_ourselves: str | None


def agent_tls(tls: AgentTls, url_host: str) -> AgentTlsSetup:
    """TLS for the agent's wss:// connection: verify the server, present our certificate."""
    context = ssl.create_default_context()
    # Python 3.13 turns on RFC 5280 strictness by default; the seed's openssl
    # commands make certificates that predate it. Chain and name are still checked.
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
    if tls.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif tls.ca_cert:
        ca_cert = tls.ca_cert
        _load("read a CA certificate", "--ca-cert", ca_cert, lambda: context.load_verify_locations(cafile=ca_cert))
    if tls.client_cert:
        cert, key = tls.client_cert, tls.client_key or None
        _load(
            "load the client certificate and key",
            "--client-cert/--client-key",
            f"{cert} / {key or cert}",
            lambda: context.load_cert_chain(cert, key),
        )
    expected = tls.server_name or url_host
    check_name = None
    if not tls.insecure and is_ip(expected):
        context.check_hostname = False  # checked by name_mismatch right after the handshake, before any HTTP
        check_name = expected
    server_hostname = tls.server_name if tls.server_name and not is_ip(tls.server_name) else None
    return AgentTlsSetup(context, server_hostname, check_name)


def server_context(tls: Any, where: str | Path, crl: Path | None = None) -> ssl.SSLContext:
    """TLS for the server itself (config [tls]); requires client certificates when client_ca is set.

    With a ``crl`` (config client_crl) a revoked client certificate fails the
    handshake, as behind nginx's ``ssl_crl``; the server checks it again at
    attach in any case (authentication.py).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load("load the certificate and key", f"{where}: tls.cert/key", tls.cert, lambda: context.load_cert_chain(tls.cert, tls.key))
    if tls.client_ca is not None:
        _load("read the client CA", f"{where}: tls.client_ca", tls.client_ca,
              lambda: context.load_verify_locations(cafile=str(tls.client_ca)))
        context.verify_mode = ssl.CERT_REQUIRED
        if crl is not None:
            _load("read the CRL", f"{where}: client_crl", crl,
                  lambda: context.load_verify_locations(cafile=str(crl)))
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _dns_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern == host:
        return True
    # A wildcard only as the whole left-most label, matching exactly one label.
    if pattern.startswith("*.") and "." in host:
        label, rest = host.split(".", 1)
        return bool(label) and rest == pattern[2:] and pattern.count(".") >= 2
    return False


def name_mismatch(peer_cert: dict[str, Any] | None, host: str) -> str | None:
    """None if ``peer_cert`` (ssl's getpeercert() dict) is for ``host``; else why not.

    subjectAltName wins when it holds any name (RFC 6125); only a certificate
    without one is matched on its subject CN, for a host name or an IP address.
    """
    if not peer_cert:
        return "the server sent no certificate"
    host = host.strip("[]")
    want_ip = ipaddress.ip_address(host) if is_ip(host) else None
    sans = [(kind, value) for kind, value in peer_cert.get("subjectAltName", ()) if kind in ("DNS", "IP Address")]
    if sans:
        for kind, value in sans:
            if want_ip is not None and kind == "IP Address":
                try:
                    if ipaddress.ip_address(value.strip()) == want_ip:
                        return None
                except ValueError:
                    continue
            elif want_ip is None and kind == "DNS" and _dns_matches(value, host):
                return None
        names = ", ".join(value for _, value in sans)
        return f"certificate is for {names}, not {host}"
    cns = [value for rdn in peer_cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    for cn in cns:
        if want_ip is not None:
            try:
                if ipaddress.ip_address(cn.strip()) == want_ip:
                    return None
            except ValueError:
                continue
        elif _dns_matches(cn, host):
            return None
    return f"certificate is for CN={', '.join(cns) or '(none)'}, not {host}"
