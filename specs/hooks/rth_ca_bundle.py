# PyInstaller run-time hook (Linux builds): let the bundled OpenSSL find the host's CA bundle.
#
# The OpenSSL inside the executable looks for the system's trusted CAs where the BUILD machine's
# distribution keeps them (/etc/pki/tls on the AlmaLinux 8 release builder, /usr/lib/ssl on
# Debian). On another distribution that place does not exist, and an agent that verifies a
# public-CA server certificate without --ca-cert would fail with "unable to get local issuer
# certificate". OpenSSL honours SSL_CERT_FILE / SSL_CERT_DIR, so when the user has set neither,
# point SSL_CERT_FILE at the first CA bundle this host has (the list Go's crypto/x509 uses).
# A few stat() calls; ssl is not imported here, so --version stays fast.
import os

if "SSL_CERT_FILE" not in os.environ and "SSL_CERT_DIR" not in os.environ:
    for _bundle in (
        "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Arch, Gentoo
        "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL, Alma, Rocky
        "/etc/ssl/ca-bundle.pem",  # openSUSE, SLES
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL 7+
        "/etc/pki/tls/cacert.pem",  # OpenELEC
        "/etc/ssl/cert.pem",  # Alpine, macOS-like layouts
    ):
        if os.path.isfile(_bundle):
            os.environ["SSL_CERT_FILE"] = _bundle
            break
    del _bundle
