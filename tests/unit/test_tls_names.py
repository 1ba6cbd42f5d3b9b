"""tls.name_mismatch: the agent's own check of the server certificate's name.

Certificates are ssl.SSLSocket.getpeercert()-style dicts: no files, no sockets.
"""

from __future__ import annotations

from typing import Any

import pytest

from reverse_websockify.tls import is_ip, name_mismatch


def cert(cn: str | None = None, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = (),
         other: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    subject: list[tuple[tuple[str, str], ...]] = [(("countryName", "DE"),), (("organizationName", "Bus Co"),)]
    if cn is not None:
        subject.append((("commonName", cn),))
    result: dict[str, Any] = {"subject": tuple(subject), "issuer": ((("commonName", "Test CA"),),), "version": 3}
    sans = [("DNS", name) for name in dns] + [("IP Address", ip) for ip in ips] + list(other)
    if sans:
        result["subjectAltName"] = tuple(sans)
    return result


# -- CN only (the seed's certificates) --------------------------------------------------------


@pytest.mark.parametrize("host", ["rendezvous.example.com", "RENDEZVOUS.Example.COM", "rendezvous.example.com."])
def test_cn_only_matches_host_name_case_insensitively(host: str) -> None:
    assert name_mismatch(cert("Rendezvous.example.com"), host) is None


@pytest.mark.parametrize("host", ["203.0.113.7", "[203.0.113.7]"])
def test_cn_only_matches_ipv4(host: str) -> None:
    assert name_mismatch(cert("203.0.113.7"), host) is None


@pytest.mark.parametrize("cn", ["2001:db8::1", "2001:DB8:0:0:0:0:0:1", "2001:0db8:0000::0001"])
@pytest.mark.parametrize("host", ["2001:db8::1", "[2001:db8::1]", "2001:DB8::0:1", "2001:db8:0:0:0:0:0:1"])
def test_cn_only_matches_ipv6_in_any_textual_form(cn: str, host: str) -> None:
    assert name_mismatch(cert(cn), host) is None


def test_cn_only_host_name_mismatch_message() -> None:
    message = name_mismatch(cert("rendezvous.example.com"), "other.example.com")
    assert message == "certificate is for CN=rendezvous.example.com, not other.example.com"


def test_cn_only_ip_mismatch_message() -> None:
    message = name_mismatch(cert("203.0.113.7"), "203.0.113.8")
    assert message is not None
    assert "CN=203.0.113.7" in message and "203.0.113.8" in message


def test_cn_that_is_a_name_does_not_match_an_ip() -> None:
    assert name_mismatch(cert("rendezvous.example.com"), "203.0.113.7") is not None


def test_cn_that_is_an_ip_does_not_match_a_name() -> None:
    assert name_mismatch(cert("203.0.113.7"), "rendezvous.example.com") is not None


def test_ipv4_does_not_match_mapped_ipv6() -> None:
    assert name_mismatch(cert("203.0.113.7"), "::ffff:203.0.113.7") is not None


def test_no_cn_at_all() -> None:
    message = name_mismatch(cert(None), "example.com")
    assert message == "certificate is for CN=(none), not example.com"


@pytest.mark.parametrize("peer", [None, {}])
def test_no_certificate(peer: Any) -> None:
    assert name_mismatch(peer, "example.com") == "the server sent no certificate"


# -- subjectAltName wins -----------------------------------------------------------------------


def test_san_present_cn_ignored_for_names() -> None:
    c = cert("rendezvous.example.com", dns=("other.example.com",))
    message = name_mismatch(c, "rendezvous.example.com")
    assert message == "certificate is for other.example.com, not rendezvous.example.com"
    assert name_mismatch(c, "other.example.com") is None


def test_san_present_cn_ignored_for_ips() -> None:
    c = cert("203.0.113.7", dns=("rendezvous.example.com",))
    assert name_mismatch(c, "203.0.113.7") is not None


def test_san_dns_match_is_case_insensitive() -> None:
    assert name_mismatch(cert(dns=("Rendezvous.Example.com",)), "rendezvous.EXAMPLE.com") is None


def test_san_any_of_several() -> None:
    c = cert(dns=("a.example.com", "b.example.com"), ips=("198.51.100.1",))
    assert name_mismatch(c, "b.example.com") is None
    assert name_mismatch(c, "198.51.100.1") is None
    message = name_mismatch(c, "c.example.com")
    assert message == "certificate is for a.example.com, b.example.com, 198.51.100.1, not c.example.com"


@pytest.mark.parametrize("host", ["bus.example.com", "BUS.example.com", "x-1.example.com"])
def test_san_wildcard_matches_one_label(host: str) -> None:
    assert name_mismatch(cert(dns=("*.example.com",)), host) is None


@pytest.mark.parametrize("host", ["example.com", "a.b.example.com", "bus.example.org", "bus.notexample.com"])
def test_san_wildcard_does_not_match_other_depths(host: str) -> None:
    assert name_mismatch(cert(dns=("*.example.com",)), host) is not None


def test_san_wildcard_on_a_public_suffix_matches_nothing() -> None:
    assert name_mismatch(cert(dns=("*.com",)), "example.com") is not None


@pytest.mark.parametrize("pattern", ["bus*.example.com", "*bus.example.com", "a.*.example.com"])
def test_partial_or_inner_wildcards_are_literal(pattern: str) -> None:
    assert name_mismatch(cert(dns=(pattern,)), "bus1.example.com") is not None
    assert name_mismatch(cert(dns=(pattern,)), "a.b.example.com") is not None


def test_san_wildcard_never_matches_an_ip() -> None:
    assert name_mismatch(cert(dns=("*.0.113.7",)), "203.0.113.7") is not None


@pytest.mark.parametrize("san_ip", ["203.0.113.7", "203.0.113.7\n"])
def test_san_ipv4_match(san_ip: str) -> None:
    assert name_mismatch(cert(ips=(san_ip,)), "203.0.113.7") is None
    assert name_mismatch(cert(ips=(san_ip,)), "203.0.113.8") is not None


@pytest.mark.parametrize("host", ["2001:db8::1", "[2001:db8::1]"])
def test_san_ipv6_match(host: str) -> None:
    # getpeercert() writes IPv6 SANs expanded and in upper case.
    assert name_mismatch(cert(ips=("2001:DB8:0:0:0:0:0:1",)), host) is None


def test_san_ip_does_not_match_a_dns_name_of_the_same_text() -> None:
    assert name_mismatch(cert(dns=("203.0.113.7",)), "203.0.113.7") is not None
    assert name_mismatch(cert(ips=("203.0.113.7",)), "rendezvous.example.com") is not None


def test_san_garbage_ip_is_skipped() -> None:
    assert name_mismatch(cert(ips=("not-an-ip", "203.0.113.7")), "203.0.113.7") is None


def test_san_without_dns_or_ip_falls_back_to_cn() -> None:
    c = cert("rendezvous.example.com", other=(("email", "ops@example.com"), ("URI", "https://x")))
    assert name_mismatch(c, "rendezvous.example.com") is None


@pytest.mark.parametrize(
    "host, expected",
    [("1.2.3.4", True), ("[::1]", True), ("::1", True), ("fe80::1%eth0", True),
     ("example.com", False), ("1.2.3", False), ("", False)],
)
def test_is_ip(host: str, expected: bool) -> None:
    assert is_ip(host) is expected
