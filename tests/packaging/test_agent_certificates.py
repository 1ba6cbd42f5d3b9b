"""Per-agent certificates and their revocation (issue 12), run the way an operator runs them.

make-server-cert.sh makes the CA with an empty CRL; make-client-cert.sh NAME puts NAME in the CN
and a DNS subjectAltName and keeps a copy by serial; revoke-client-cert.sh revokes by file or by
serial and re-signs the CRL, also for a CA made by hand with the original README's commands.
Every result is checked with openssl itself (`openssl verify -crl_check_all`, which is what nginx's
ssl_crl does), and the shipped nginx.conf is run on loopback to show that a revoked certificate is
refused after `nginx -s reload`, another one is not, and nginx passes the verified certificate to
the server in headers no client can forge. See docs/agent-identity.md.
"""

from __future__ import annotations

import datetime
import http.server
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pytest

from tests.support.nginx import ShippedNginx
from tests.support.waiting import wait_for

from .tools import CLIENT_CERT_SCRIPT, REVOKE_SCRIPT, SERVER_CERT_SCRIPT, cert_field, need, ok, run

# The original README's commands, verbatim but for the output folder of the client's files.
ORIGINAL_SUBJECT = "/C=CN/ST=Beijing/L=Beijing/O=MyCompany/OU=MyBusinessUnit/CN=my.rendezvous.com"
ORIGINAL_SERVER_CERT = ("openssl req -x509 -nodes -days 3650 -newkey rsa:2048 -keyout tls/server.key.pem "
                        f"-out tls/server.cert.pem -subj '{ORIGINAL_SUBJECT}'")
ORIGINAL_CLIENT_CERT = """
openssl genrsa -out client.key.pem 4096
openssl req -subj '/CN=client' -new -key client.key.pem -out client.csr
echo extendedKeyUsage = clientAuth > client-extfile.cnf
openssl x509 -req -days 3650 -sha256 -in client.csr -CA server.cert.pem -CAkey server.key.pem \\
  -CAcreateserial -out client.cert.pem -extfile client-extfile.cnf
rm client.csr client-extfile.cnf
"""

RELOAD_STEPS = ("nginx -s reload", "docker compose exec nginx nginx -s reload", "kill -HUP",
                "systemctl reload reverse-websockify-server")


def serial_of(cert: Path) -> str:
    return cert_field(cert, "-serial").strip().removeprefix("serial=")


def revoked_serials(crl: Path) -> set[str]:
    text = ok(run([need("openssl"), "crl", "-in", str(crl), "-noout", "-text"])).stdout
    return set(re.findall(r"Serial Number: ([0-9A-F]+)", text))


def verify(tls: Path, cert: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """openssl verify against the CA and its CRL, for the whole chain, as nginx's ssl_crl does."""
    return run([need("openssl"), "verify", "-crl_check_all", "-CRLfile", str(tls / "crl.pem"),
                "-CAfile", str(tls / "server.cert.pem"), *extra, str(cert)])


def accepted(tls: Path, cert: Path, *extra: str) -> bool:
    result = verify(tls, cert, *extra)
    assert result.returncode == 0 or "verification failed" in result.stdout + result.stderr, result
    return result.returncode == 0


def refused_as_revoked(tls: Path, cert: Path) -> bool:
    result = verify(tls, cert)
    return result.returncode != 0 and "certificate revoked" in result.stdout + result.stderr


def revoke(deploy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """revoke-client-cert.sh run in the deployment folder (it finds tls/server.cert.pem by itself)."""
    return run([str(REVOKE_SCRIPT), *args], cwd=deploy)


def unchanged(deploy: Path) -> tuple[bytes, bytes]:
    tls = deploy / "tls"
    return (tls / "ca" / "index.txt").read_bytes(), (tls / "crl.pem").read_bytes()


# -- a fleet: the CA and three agents, made once; tests that revoke work on a copy ------------------


@dataclass
class Fleet:
    deploy: Path  # the rendezvous folder: tls/ and one agent-NAME/ folder per agent
    issued: dict[str, subprocess.CompletedProcess[str]]  # make-client-cert.sh's run, by name

    @property
    def tls(self) -> Path:
        return self.deploy / "tls"

    def cert(self, name: str) -> Path:
        return self.deploy / f"agent-{name}" / "client.cert.pem"

    def copy(self, to: Path) -> "Fleet":
        shutil.copytree(self.deploy, to, symlinks=True)
        return Fleet(to, self.issued)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    need("openssl")
    deploy = tmp_path_factory.mktemp("fleet")
    ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1"], cwd=deploy))
    issued = {name: ok(run([str(CLIENT_CERT_SCRIPT), name], cwd=deploy)) for name in ("bus01", "bus02", "bus03")}
    return Fleet(deploy, issued)


@pytest.fixture
def own_fleet(fleet: Fleet, tmp_path: Path) -> Fleet:
    return fleet.copy(tmp_path / "deploy")


# -- make-server-cert.sh: the CA, its empty CRL, its openssl ca state --------------------------------


def test_server_cert_script_writes_an_empty_crl(fleet: Fleet) -> None:
    tls = fleet.tls
    crl = tls / "crl.pem"
    check = ok(run(["openssl", "crl", "-in", str(crl), "-CAfile", str(tls / "server.cert.pem"), "-noout"]))
    assert "verify OK" in check.stdout + check.stderr  # signed by the CA
    assert revoked_serials(crl) == set()
    assert stat.S_IMODE(crl.stat().st_mode) == 0o644  # nginx and the server's user both read it
    # Valid for ten years: nginx refuses every client certificate once nextUpdate has passed.
    next_update = ok(run(["openssl", "crl", "-in", str(crl), "-noout", "-nextupdate"])).stdout.strip()
    when = datetime.datetime.strptime(next_update.removeprefix("nextUpdate="), "%b %d %H:%M:%S %Y %Z")
    assert when - datetime.datetime.utcnow() > datetime.timedelta(days=3649)
    state = tls / "ca"
    assert (state / "openssl.cnf").is_file() and (state / "index.txt").read_text() == ""
    assert (state / "crlnumber").is_file() and (state / "issued").is_dir()
    assert stat.S_IMODE((tls / "server.key.pem").stat().st_mode) == 0o600


def test_server_cert_script_again_replaces_the_ca_and_its_state(own_fleet: Fleet) -> None:
    old_cert = (own_fleet.tls / "server.cert.pem").read_bytes()
    ok(revoke(own_fleet.deploy, str(own_fleet.cert("bus01"))))
    again = ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1"], cwd=own_fleet.deploy))
    assert "replacing the CA" in again.stderr
    assert (own_fleet.tls / "server.cert.pem").read_bytes() != old_cert
    # The old CA's bookkeeping is kept aside; the new CA starts with an empty CRL of its own.
    kept = list(own_fleet.tls.glob("ca.replaced-*"))
    assert len(kept) == 1 and (kept[0] / "index.txt").read_text().startswith("R\t")
    assert (own_fleet.tls / "ca" / "index.txt").read_text() == ""
    assert revoked_serials(own_fleet.tls / "crl.pem") == set()
    ok(run(["openssl", "crl", "-in", str(own_fleet.tls / "crl.pem"), "-CAfile",
            str(own_fleet.tls / "server.cert.pem"), "-noout"]))
    assert not accepted(own_fleet.tls, own_fleet.cert("bus02"))  # signed by the old CA


def test_server_cert_script_needs_the_revoke_script_next_to_it(tmp_path: Path) -> None:
    shutil.copy(SERVER_CERT_SCRIPT, tmp_path)
    result = run([str(tmp_path / SERVER_CERT_SCRIPT.name), "127.0.0.1"], cwd=tmp_path)
    assert result.returncode == 2 and "revoke-client-cert.sh" in result.stderr
    assert not (tmp_path / "tls").exists()


# -- make-client-cert.sh NAME -------------------------------------------------------------------------


def test_client_cert_carries_the_name_in_cn_and_dns_san(fleet: Fleet) -> None:
    cert = fleet.cert("bus01")
    # The command docs/agent-identity.md gives to check a certificate.
    shown = cert_field(cert, "-subject", "-ext", "subjectAltName", "-serial", "-issuer")
    assert "subject=CN = bus01\n" in shown
    assert re.search(r"X509v3 Subject Alternative Name: *\n\s+DNS:bus01\n", shown), shown
    assert "issuer=C = CN, ST = Beijing, L = Beijing, O = MyCompany, OU = MyBusinessUnit, CN = 127.0.0.1" in shown
    assert "TLS Web Client Authentication" in cert_field(cert, "-ext", "extendedKeyUsage")
    # The line to paste into config.toml.
    out = fleet.issued["bus01"].stdout
    assert '[remote_service.<ID>]\n  agent_identity = "bus01"\n' in out, out
    # Default output folder agent-NAME: the agent host's bundle, without the CA's key.
    assert sorted(p.name for p in cert.parent.iterdir()) == ["client.cert.pem", "client.key.pem", "server.cert.pem"]
    assert stat.S_IMODE((cert.parent / "client.key.pem").stat().st_mode) == 0o600
    # A copy by serial, for revoke-client-cert.sh --serial.
    serial = serial_of(cert)
    assert (fleet.tls / "ca" / "issued" / f"{serial}.pem").read_bytes() == cert.read_bytes()
    assert serial in fleet.issued["bus01"].stderr
    assert accepted(fleet.tls, cert)
    # Three agents, three serials.
    assert len({serial_of(fleet.cert(name)) for name in ("bus01", "bus02", "bus03")}) == 3


def test_client_cert_cn_option_and_explicit_paths(own_fleet: Fleet, tmp_path: Path) -> None:
    """--cn NAME (the older spelling) and --ca-cert/--ca-key/--out still work, and mean the same."""
    fleet = own_fleet
    out = tmp_path / "agent"
    ok(run([str(CLIENT_CERT_SCRIPT), "--ca-cert", str(fleet.tls / "server.cert.pem"), "--ca-key",
            str(fleet.tls / "server.key.pem"), "--out", str(out), "--cn", "LKLAFA151NA774655"], cwd=tmp_path))
    cert = out / "client.cert.pem"
    assert cert_field(cert, "-subject").strip() == "subject=CN = LKLAFA151NA774655"
    assert "DNS:LKLAFA151NA774655" in cert_field(cert, "-ext", "subjectAltName")
    assert accepted(fleet.tls, cert)
    # The same name twice is fine, two different ones are not.
    clash = run([str(CLIENT_CERT_SCRIPT), "--cn", "bus01", "bus02"], cwd=fleet.deploy)
    assert clash.returncode == 2 and "bus01" in clash.stderr and "bus02" in clash.stderr


@pytest.mark.parametrize("name", ["", "bus 01", "*.fleet", "bus01/x", "-bus01", "büs01", "x" * 65, "a,CN=b"])
def test_client_cert_refuses_names_that_cannot_be_matched_exactly(tmp_path: Path, name: str) -> None:
    result = run([str(CLIENT_CERT_SCRIPT), "--ca-cert", "nope.pem", "--cn", name], cwd=tmp_path)
    assert result.returncode == 2, result
    assert not list(tmp_path.iterdir())  # refused before anything was written


# -- revoke-client-cert.sh -----------------------------------------------------------------------------


def test_revoke_by_file_then_by_serial(own_fleet: Fleet) -> None:
    tls, deploy = own_fleet.tls, own_fleet.deploy
    bus01, bus02, bus03 = (own_fleet.cert(n) for n in ("bus01", "bus02", "bus03"))
    assert accepted(tls, bus01) and accepted(tls, bus02)

    result = ok(revoke(deploy, str(bus01.relative_to(deploy))))
    assert revoked_serials(tls / "crl.pem") == {serial_of(bus01)}
    assert refused_as_revoked(tls, bus01)
    assert accepted(tls, bus02) and accepted(tls, bus03)
    for step in RELOAD_STEPS:  # both readers of the CRL must reload: nginx and the server
        assert step in result.stdout, result.stdout

    # By serial, written the way a log or `openssl x509 -text` may show it.
    serial = serial_of(bus02)
    as_text = "0x" + ":".join(serial[i:i + 2] for i in range(0, len(serial), 2)).lower()
    ok(revoke(deploy, "--serial", as_text, "--reason", "superseded"))
    assert revoked_serials(tls / "crl.pem") == {serial_of(bus01), serial}
    assert refused_as_revoked(tls, bus02)
    assert accepted(tls, bus03)
    crl_text = ok(run(["openssl", "crl", "-in", str(tls / "crl.pem"), "-noout", "-text"])).stdout
    assert "Superseded" in crl_text

    # Again: nothing changes, and it says so.
    before = revoked_serials(tls / "crl.pem")
    again = ok(revoke(deploy, str(bus01), "--serial", serial))
    assert again.stderr.count("already revoked") == 2
    assert revoked_serials(tls / "crl.pem") == before

    listing = ok(revoke(deploy, "--list")).stdout
    rows = {line.split()[0]: line.split()[1] for line in listing.splitlines()[1:]}
    assert rows == {serial_of(bus01): "revoked", serial: "revoked", serial_of(bus03): "valid"}, listing


def test_revoke_refuses_bad_arguments_and_changes_nothing(own_fleet: Fleet, tmp_path: Path) -> None:
    deploy, tls = own_fleet.deploy, own_fleet.tls
    # A client certificate from another CA.
    other = tmp_path / "other"
    other.mkdir()
    ok(run([str(SERVER_CERT_SCRIPT), "127.0.0.1", "."], cwd=other))
    ok(run([str(CLIENT_CERT_SCRIPT)], cwd=other))
    before = unchanged(deploy)
    for args, said in [
        ([str(other / "client.cert.pem")], "was not signed by"),
        ([str(tls / "server.cert.pem")], "the CA certificate itself"),
        (["--serial", "xyz"], "not a hexadecimal serial"),
        (["--serial", "0A", "--reason", "stolen"], "--reason"),
        (["--crl-days", "0", "--refresh"], "--crl-days"),
        (["no-such.pem"], "cannot read"),
        ([str(own_fleet.cert("bus01")), "no-such.pem"], "cannot read"),  # one typo: nothing revoked
        ([], "Usage:"),
        (["--refresh", str(own_fleet.cert("bus01"))], "Usage:"),
    ]:
        result = revoke(deploy, *args)
        assert result.returncode == 2 and said in result.stderr, (args, result)
        assert unchanged(deploy) == before, args
    assert accepted(tls, own_fleet.cert("bus01"))


def test_revoke_on_a_ca_made_with_the_original_readme_commands(tmp_path: Path) -> None:
    """A deployment made by hand: no ca/ state, no crl.pem, certificates without a copy or a SAN."""
    need("openssl")
    deploy, tls = tmp_path / "deploy", tmp_path / "deploy" / "tls"
    tls.mkdir(parents=True)
    ok(run(["bash", "-euc", ORIGINAL_SERVER_CERT], cwd=deploy))
    agents = {}
    for name in ("a", "b", "c"):  # the client commands run where server.*.pem are, then the files move
        ok(run(["bash", "-euc", ORIGINAL_CLIENT_CERT], cwd=tls, timeout=120))
        agents[name] = deploy / f"agent-{name}"
        agents[name].mkdir()
        for f in ("client.cert.pem", "client.key.pem"):
            (tls / f).rename(agents[name] / f)
    assert sorted(p.name for p in tls.iterdir()) == ["server.cert.pem", "server.cert.srl", "server.key.pem"]

    # Before switching to the shipped nginx.conf (ssl_crl /tls/crl.pem): make the CRL.
    ok(revoke(deploy, "--refresh"))
    assert revoked_serials(tls / "crl.pem") == set()
    assert all(accepted(tls, agents[n] / "client.cert.pem") for n in agents)

    ok(revoke(deploy, str(agents["a"] / "client.cert.pem")))
    # b: only its serial is known (the file is gone); it has no copy under ca/issued/ either.
    b_serial = serial_of(agents["b"] / "client.cert.pem")
    result = ok(revoke(deploy, "--serial", b_serial.lower()))
    assert "recorded by serial only" in result.stderr
    assert revoked_serials(tls / "crl.pem") == {serial_of(agents["a"] / "client.cert.pem"), b_serial}
    assert refused_as_revoked(tls, agents["a"] / "client.cert.pem")
    assert refused_as_revoked(tls, agents["b"] / "client.cert.pem")
    assert accepted(tls, agents["c"] / "client.cert.pem")
    assert (tls / "ca" / "openssl.cnf").is_file()


def test_crl_next_update_is_a_deadline(own_fleet: Fleet) -> None:
    """Past the CRL's nextUpdate, verification fails for every certificate; --refresh moves it."""
    tls, bus03 = own_fleet.tls, own_fleet.cert("bus03")
    in_two_days = str(int((datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)).timestamp()))
    ok(revoke(own_fleet.deploy, "--refresh", "--crl-days", "1"))
    expired = verify(tls, bus03, "-attime", in_two_days)
    assert expired.returncode != 0 and "CRL has expired" in expired.stdout + expired.stderr
    assert accepted(tls, bus03)  # still valid today
    result = ok(revoke(own_fleet.deploy, "--refresh"))
    assert "valid until" in result.stderr and "--refresh" in result.stderr
    assert accepted(tls, bus03, "-attime", in_two_days)


def test_renewed_server_certificate_keeps_client_certificates_and_crl(own_fleet: Fleet) -> None:
    """The renewal in docs/agent-identity.md (and README): same key and subject, a new validity period."""
    tls, deploy = own_fleet.tls, own_fleet.deploy
    ok(revoke(deploy, str(own_fleet.cert("bus01"))))
    ok(run(["bash", "-euc", """
openssl x509 -in tls/server.cert.pem -signkey tls/server.key.pem -days 3650 -out tls/server.cert.new.pem
mv tls/server.cert.pem tls/server.cert.old.pem
mv tls/server.cert.new.pem tls/server.cert.pem
"""], cwd=deploy))
    # The clients' certificates and the CRL still verify against the renewed CA certificate...
    assert accepted(tls, own_fleet.cert("bus02"))
    assert refused_as_revoked(tls, own_fleet.cert("bus01"))
    # ...and revoking goes on with it.
    ok(revoke(deploy, "--serial", serial_of(own_fleet.cert("bus02"))))
    assert refused_as_revoked(tls, own_fleet.cert("bus02")) and accepted(tls, own_fleet.cert("bus03"))
    # The agents, though, need the new file as --ca-cert: the old one does not vouch for the new
    # certificate, and a bundle of both does not help (OpenSSL uses the first of two same-named ones).
    new, old = tls / "server.cert.pem", tls / "server.cert.old.pem"
    ok(run(["openssl", "verify", "-CAfile", str(new), str(new)]))
    assert run(["openssl", "verify", "-CAfile", str(old), str(new)]).returncode != 0
    (deploy / "both.pem").write_text(old.read_text() + new.read_text())
    assert run(["openssl", "verify", "-CAfile", str(deploy / "both.pem"), str(new)]).returncode != 0


# -- the shipped nginx.conf: ssl_crl, and the identity headers --------------------------------------


class HeaderEcho(http.server.ThreadingHTTPServer):
    """The upstream: answers 200 with the X-Client-* headers it got from nginx (each one's values)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = [f"{name}: {value}" for name in ("X-Client-Verify", "X-Client-Cert")
                         for value in self.headers.get_all(name) or []]
                body = "\n".join(lines).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(5)


@dataclass
class Front:
    fleet: Fleet
    nginx: ShippedNginx

    def context(self, name: str, maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.fleet.tls / "server.cert.pem"))
        context.check_hostname = False  # the CN is 127.0.0.1, and OpenSSL never matches an IP against a CN
        context.maximum_version = maximum
        cert = self.fleet.cert(name)
        context.load_cert_chain(str(cert), str(cert.parent / "client.key.pem"))
        return context

    def get(self, context: ssl.SSLContext, session: ssl.SSLSession | None = None,
            headers: str = "") -> tuple[int, str, ssl.SSLSession | None, bool]:
        """GET /forward_to_me/BUS1 over one connection: status, body, TLS session, whether it was resumed."""
        with socket.create_connection(("127.0.0.1", self.nginx.https_port), timeout=10) as raw:
            with context.wrap_socket(raw, session=session) as tls:
                tls.sendall(f"GET /forward_to_me/BUS1 HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
                            .encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
                return int(head.split()[1]), body, tls.session, tls.session_reused

    def reload(self) -> None:
        """nginx -s reload, and wait until the old workers are gone: until then they still accept
        connections, and check certificates against the CRL they were started with."""
        old = set(self.nginx.process.children())
        assert old
        ok(run(self.nginx.args + ["-s", "reload"]))
        wait_for(lambda: (now := set(self.nginx.process.children())) and not now & old, 15,
                 f"nginx's workers {old} to be replaced")


@pytest.fixture
def front(own_fleet: Fleet) -> Iterator[Front]:
    need("nginx")
    upstream = HeaderEcho()
    nginx = None
    try:
        nginx = ShippedNginx(own_fleet.deploy, own_fleet.tls, upstream.port)
        yield Front(own_fleet, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        upstream.close()


def test_nginx_passes_the_verified_certificate_and_drops_forged_headers(front: Front) -> None:
    forged = "X-Client-Verify: SUCCESS\r\nX-Client-Cert: forged\r\nx-client-verify: NONE\r\n"
    for name in ("bus01", "bus02"):
        status, body, _, _ = front.get(front.context(name), headers=forged)
        assert status == 200, body
        verify_lines = [line for line in body.splitlines() if line.startswith("X-Client-Verify: ")]
        cert_lines = [line for line in body.splitlines() if line.startswith("X-Client-Cert: ")]
        assert verify_lines == ["X-Client-Verify: SUCCESS"], body
        assert len(cert_lines) == 1, body
        pem = unquote(cert_lines[0].removeprefix("X-Client-Cert: "))
        assert pem.strip() == front.fleet.cert(name).read_text().strip()


def test_nginx_refuses_a_revoked_certificate_after_reload(front: Front) -> None:
    deploy = front.fleet.deploy
    # Sessions bus01 could try to resume after its revocation: TLS 1.2 (session ID) and 1.3 (ticket).
    sessions = {}
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = front.context("bus01", version)
        status, _, session, _ = front.get(context)
        assert status == 200
        status, _, _, resumed = front.get(context, session)
        assert status == 200 and resumed, version  # resumption works: the check below means something
        sessions[version] = (context, session)

    ok(revoke(deploy, str(front.fleet.cert("bus01"))))
    assert front.get(front.context("bus01"))[0] == 200  # nginx has not read the new CRL yet
    front.reload()
    status, body, _, _ = front.get(front.context("bus01"))
    assert status == 400 and "The SSL certificate error" in body, (status, body)
    # A TLS session from before the revocation does not get it in either.
    for version, (context, session) in sessions.items():
        status, body, _, resumed = front.get(context, session)
        assert status == 400 and not resumed, (version, status, body)
    assert front.get(front.context("bus02"))[0] == 200
    assert "certificate revoked" in front.nginx.error_log()


def test_nginx_refuses_everyone_once_the_crl_has_expired(front: Front) -> None:
    """The nextUpdate caveat of docs/agent-identity.md, with the real nginx; --refresh is the cure."""
    tls = front.fleet.tls
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = "%Y%m%d%H%M%SZ"
    # The CA's own CRL, as revoke-client-cert.sh makes it, but with a nextUpdate of yesterday.
    ok(run(["openssl", "ca", "-batch", "-config", "openssl.cnf", "-cert", "../server.cert.pem", "-keyfile",
            "../server.key.pem", "-gencrl", "-crl_lastupdate", (now - datetime.timedelta(days=2)).strftime(stamp),
            "-crl_nextupdate", (now - datetime.timedelta(days=1)).strftime(stamp), "-out", "../crl.pem"],
           cwd=tls / "ca"))
    front.reload()
    status, body, _, _ = front.get(front.context("bus02"))
    assert status == 400 and "The SSL certificate error" in body, (status, body)
    assert "CRL has expired" in front.nginx.error_log()

    ok(revoke(front.fleet.deploy, "--refresh"))
    front.reload()
    assert front.get(front.context("bus02"))[0] == 200
