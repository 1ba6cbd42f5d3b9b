"""Who may attach: certificate names (identity.py), the CRL (revocation.py), the rules (authentication.py).

Certificates are made in-process with ``cryptography`` (the same library the server reads them
with); the end-to-end tests use the shipped openssl scripts and real nginx.
"""

from __future__ import annotations

import datetime
import hashlib
from http import HTTPStatus
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reverse_websockify.authentication import Credentials, check, still_allowed
from reverse_websockify.config import ConfigError, Endpoint, ServiceConfig, load
from reverse_websockify.identity import AgentIdentity, CertificateError, from_certificate, from_proxy_headers
from reverse_websockify.revocation import RevocationList, RevocationListError, load_revocation_list

NOW = datetime.datetime.now(datetime.timezone.utc)


class CA:
    def __init__(self, name: str = "rendezvous") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])

    def issue(self, cn: str | None, dns: tuple[str, ...] = (), serial: int | None = None) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                   .public_key(ec.generate_private_key(ec.SECP256R1()).public_key())
                   .serial_number(serial or x509.random_serial_number())
                   .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1)))
        if dns:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), False)
        return builder.sign(self.key, hashes.SHA256())

    def crl(self, *revoked: x509.Certificate) -> bytes:
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.name).last_update(NOW)
                   .next_update(NOW + datetime.timedelta(days=1)))
        for cert in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(NOW).build())
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def service(**kwargs: object) -> ServiceConfig:
    return ServiceConfig("bus02", "Bus02", Endpoint("127.0.0.1", 39036), **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


# -- identity.py ----------------------------------------------------------------------------


def test_names_come_from_the_cn_and_dns_subject_alt_names(ca: CA) -> None:
    cert = ca.issue("bus02", ("bus02.fleet.example", "bus02"))
    identity = from_certificate(pem(cert), "proxy")
    assert identity.common_names == ("bus02",)
    assert identity.names == ("bus02", "bus02.fleet.example")  # each name once
    assert identity.serial == cert.serial_number and identity.issuer == "CN=rendezvous"
    assert from_certificate(der(cert), "tls") == AgentIdentity(identity.common_names, identity.dns_names,
                                                              identity.serial, identity.issuer, "tls")


@pytest.mark.parametrize("wanted, matches", [
    ("bus02", True), ("BUS02", True), ("bus02.fleet.example", True),  # CN, case, DNS SAN
    ("bus0", False), ("bus020", False), ("us02", False), ("*.fleet.example", False), ("fleet.example", False),
    ("bus02 ", False), ("", False),
])
def test_matching_is_exact_and_ascii_case_insensitive(ca: CA, wanted: str, matches: bool) -> None:
    identity = from_certificate(pem(ca.issue("bus02", ("bus02.fleet.example",))), "tls")
    assert identity.matches(wanted) is matches


def test_a_wildcard_in_the_certificate_is_not_a_pattern(ca: CA) -> None:
    identity = from_certificate(pem(ca.issue(None, ("*.fleet.example",))), "tls")
    assert not identity.matches("bus02.fleet.example")
    assert identity.matches("*.fleet.example")  # only itself (and config refuses a '*' anyway)


def test_case_folding_is_ascii_only(ca: CA) -> None:
    identity = from_certificate(pem(ca.issue("bus-straße")), "tls")
    assert identity.matches("BUS-STRAßE") and not identity.matches("bus-strasse")


def test_a_certificate_without_names_matches_nothing(ca: CA) -> None:
    identity = from_certificate(pem(ca.issue(None)), "tls")
    assert identity.names == () and not identity.matches("bus02")
    assert "no CN or DNS name" in str(identity)


def test_proxy_headers_carry_the_verified_certificate(ca: CA) -> None:
    cert = ca.issue("bus02")
    identity, why = from_proxy_headers({"X-Client-Verify": "SUCCESS", "X-Client-Cert": quote(pem(cert).decode())})
    assert why == "" and identity is not None and identity.matches("bus02") and identity.source == "proxy"


@pytest.mark.parametrize("headers, expected", [
    ({}, "passed no client certificate"),
    ({"X-Client-Verify": "NONE"}, "did not verify"),
    ({"X-Client-Verify": "FAILED:certificate revoked", "X-Client-Cert": "x"}, "did not verify"),
    ({"X-Client-Verify": "SUCCESS"}, "passed none"),
    ({"X-Client-Verify": "SUCCESS", "X-Client-Cert": "-----BEGIN CERTIFICATE-----%0Agarbage"}, "not a certificate"),
    ({"X-Client-Cert": "anything"}, "did not verify"),  # a certificate without nginx's verdict is not believed
])
def test_proxy_headers_without_a_verified_certificate_give_no_identity(headers: dict[str, str], expected: str) -> None:
    identity, why = from_proxy_headers(headers)
    assert identity is None and expected in why


def test_duplicated_proxy_headers_give_no_identity() -> None:
    class Twice(dict):  # websockets' Headers raises MultipleValuesError (a LookupError) on get()
        def get(self, key: str, default: object = None) -> str:
            raise LookupError(key)

    identity, why = from_proxy_headers(Twice())
    assert identity is None and "more than once" in why


def test_garbage_is_a_certificate_error() -> None:
    with pytest.raises(CertificateError):
        from_certificate(b"\x30\x03\x02\x01\x00", "tls")


# -- revocation.py --------------------------------------------------------------------------


def test_the_crl_revokes_by_issuer_and_serial(ca: CA, tmp_path: Path) -> None:
    lost, kept = ca.issue("bus01"), ca.issue("bus02")
    other_ca = CA("someone else")
    same_serial_elsewhere = other_ca.issue("bus01", serial=lost.serial_number)
    path = tmp_path / "crl.pem"
    path.write_bytes(ca.crl(lost) + other_ca.crl())  # nginx's ssl_crl file may hold one CRL per CA
    revoked = load_revocation_list(path, "client_crl")
    assert len(revoked) == 1
    assert revoked.is_revoked(from_certificate(pem(lost), "tls"))
    assert not revoked.is_revoked(from_certificate(pem(kept), "tls"))
    assert not revoked.is_revoked(from_certificate(pem(same_serial_elsewhere), "tls"))
    assert not revoked.is_revoked(None)


def test_a_der_crl_is_read_too(ca: CA, tmp_path: Path) -> None:
    lost = ca.issue("bus01")
    crl = x509.load_pem_x509_crl(ca.crl(lost))
    path = tmp_path / "crl.der"
    path.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    assert load_revocation_list(path, "client_crl").is_revoked(from_certificate(pem(lost), "tls"))


@pytest.mark.parametrize("content, expected", [(None, "No such file"), (b"not a crl", "not a CRL"),
                                               (b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", "not a CRL")])
def test_an_unreadable_crl_is_one_line(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "crl.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RevocationListError) as error:
        load_revocation_list(path, "config.toml: client_crl")
    message = str(error.value)
    assert message.startswith(f"config.toml: client_crl: {path}") and expected in message and "\n" not in message


# -- authentication.py ----------------------------------------------------------------------


def credentials(ca: CA, cn: str | None, authorization: str = "") -> Credentials:
    if cn is None:
        return Credentials(authorization, None, "no client certificate")
    return Credentials(authorization, from_certificate(pem(ca.issue(cn)), "proxy"))


def test_an_unbound_service_takes_any_agent(ca: CA) -> None:
    assert check(service(), credentials(ca, None), RevocationList()) is None
    assert check(service(), credentials(ca, "bus01"), RevocationList()) is None


def test_a_bound_service_takes_only_its_identity(ca: CA) -> None:
    bound = service(agent_identity="bus02")
    assert check(bound, credentials(ca, "bus02"), RevocationList()) is None
    refusal = check(bound, credentials(ca, "bus01"), RevocationList())
    assert refusal is not None and refusal.status == HTTPStatus.FORBIDDEN and refusal.reason == "identity mismatch"
    assert "bus02" in refusal.text and "bus01" in refusal.text
    refusal = check(bound, credentials(ca, None), RevocationList())
    assert refusal is not None and refusal.status == HTTPStatus.FORBIDDEN and refusal.reason == "no identity"
    assert "no client certificate" in refusal.text


def test_a_revoked_certificate_is_refused_everywhere(ca: CA) -> None:
    cert = ca.issue("bus02")
    identity = from_certificate(pem(cert), "tls")
    revoked = RevocationList(None, frozenset({(identity.issuer, identity.serial)}))
    for config in (service(), service(agent_identity="bus02")):
        refusal = check(config, Credentials("", identity), revoked)
        assert refusal is not None and refusal.status == HTTPStatus.FORBIDDEN and refusal.reason == "certificate revoked"
        assert still_allowed(config, identity, revoked) is not None
    assert still_allowed(service(agent_identity="bus02"), identity, RevocationList()) is None
    assert "bound to" in (still_allowed(service(agent_identity="bus03"), identity, RevocationList()) or "")


@pytest.mark.parametrize("kind", ["token", "token_sha256"])
def test_tokens_plain_or_hashed(ca: CA, kind: str) -> None:
    secret = "s3cret token"
    config = service(**{kind: secret if kind == "token" else hashlib.sha256(secret.encode()).digest()})
    assert check(config, Credentials(f"Bearer {secret}"), RevocationList()) is None
    for offered, why in (("", "missing token"), ("Bearer wrong", "wrong token"), (secret, "wrong token"),
                         (f"Bearer {secret} ", "wrong token")):
        refusal = check(config, Credentials(offered), RevocationList())
        assert refusal is not None and refusal.status == HTTPStatus.UNAUTHORIZED and refusal.reason == why
        assert secret not in refusal.text


def test_token_and_binding_both_apply(ca: CA) -> None:
    config = service(token="t", agent_identity="bus02")
    assert check(config, credentials(ca, "bus02", "Bearer t"), RevocationList()) is None
    assert check(config, credentials(ca, "bus01", "Bearer t"), RevocationList()).reason == "identity mismatch"  # type: ignore[union-attr]
    assert check(config, credentials(ca, "bus02", "Bearer x"), RevocationList()).reason == "wrong token"  # type: ignore[union-attr]


# -- config.py ------------------------------------------------------------------------------


def write(tmp_path: Path, service_lines: str, top: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'http_server_endpoint = "127.0.0.1:39000"\n{top}\n[remote_service.bus02]\n'
                    f'local_listen_endpoint = "127.0.0.1:39036"\n{service_lines}\n')
    return path


def test_config_reads_binding_hashed_token_and_crl(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "crl.pem").write_text("")
    digest = hashlib.sha256(b"t").hexdigest()
    config = load(write(tmp_path, f'agent_identity = "bus02"\ntoken_sha256 = "{digest.upper()}"',
                        'client_crl = "tls/crl.pem"'))
    bus02 = config.services["bus02"]
    assert bus02.agent_identity == "bus02" and bus02.token_sha256 == bytes.fromhex(digest) and bus02.guarded
    assert config.client_crl == tmp_path / "tls" / "crl.pem"  # relative to the config file
    assert digest not in repr(bus02)
    assert not load(write(tmp_path, "")).services["bus02"].guarded  # the original format still loads


@pytest.mark.parametrize("service_lines, top, expected", [
    ('agent_identity = "*.fleet"', "", "remote_service.bus02.agent_identity: expected the exact CN"),
    ('agent_identity = ""', "", "remote_service.bus02.agent_identity: expected"),
    ('agent_identity = 2', "", "remote_service.bus02.agent_identity: expected"),
    ('token_sha256 = "abc"', "", "remote_service.bus02.token_sha256: expected 64 hex digits"),
    (f'token = "t"\ntoken_sha256 = "{"0" * 64}"', "", "token_sha256: give token or token_sha256, not both"),
    ("", 'client_crl = "missing.pem"', "client_crl: 'missing.pem': no such file"),
])
def test_config_errors_name_the_key(tmp_path: Path, service_lines: str, top: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, service_lines, top))
    assert expected in str(error.value)
