#!/bin/bash
# Make a client certificate for one agent, signed by the rendezvous server's self-signed certificate
# (made by ../rendezvous/make-server-cert.sh), which nginx trusts via ssl_client_certificate.
# Run it where the server's key is (the rendezvous host), then copy OUTPUT_DIR's
# client.cert.pem, client.key.pem and server.cert.pem to the agent's host.
#
# Usage: ./make-client-cert.sh [--ca-cert PATH] [--ca-key PATH] [--out DIR] [NAME]
#   NAME       the agent's identity: its service ID or agent name, e.g. bus02. It becomes the subject
#              CN and a subjectAltName DNS:NAME, and the server admits the certificate only to the
#              service whose config.toml table says agent_identity = "NAME" (printed at the end).
#              Letters, digits and . _ ~ - only. Without NAME: CN=client, as in the original README.
#   --cn NAME  the same as NAME (the older spelling)
#   --ca-cert  the server certificate that signs (default: server.cert.pem, else tls/server.cert.pem)
#   --ca-key   its key (default: server.key.pem next to --ca-cert)
#   --out      where to write client.key.pem and client.cert.pem
#              (default: agent-NAME with a NAME argument, else .)
# A copy of each certificate is kept as ca/issued/<SERIAL>.pem next to the CA certificate, so that
# ../rendezvous/revoke-client-cert.sh can revoke it by serial number later.
set -euo pipefail

usage() {
    echo "usage: $0 [--ca-cert PATH] [--ca-key PATH] [--out DIR] [NAME | --cn NAME]" >&2
    echo "  NAME: the agent's service ID or name, e.g. bus02 (default: client)" >&2
    echo "  defaults: --ca-cert server.cert.pem (else tls/server.cert.pem) --ca-key server.key.pem next to it" >&2
    echo "            --out agent-NAME with a NAME argument, else ." >&2
    exit 2
}

ca_cert=
ca_key=
out=
name=
set_name() {
    if [ -z "$1" ]; then
        echo "$0: NAME must not be empty" >&2
        exit 2
    fi
    if [ -n "$name" ] && [ "$name" != "$1" ]; then
        echo "$0: two different names: $name and $1" >&2
        exit 2
    fi
    name=$1
}
positional=
while [ $# -gt 0 ]; do
    case "$1" in
        --ca-cert) [ $# -ge 2 ] || usage; ca_cert=$2; shift 2 ;;
        --ca-key) [ $# -ge 2 ] || usage; ca_key=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --cn) [ $# -ge 2 ] || usage; set_name "$2"; shift 2 ;;
        --ca-cert=*) ca_cert=${1#*=}; shift ;;
        --ca-key=*) ca_key=${1#*=}; shift ;;
        --out=*) out=${1#*=}; shift ;;
        --cn=*) set_name "${1#*=}"; shift ;;
        -*) usage ;;
        *) [ -z "$positional" ] || usage; positional=$1; set_name "$1"; shift ;;
    esac
done
if [ -z "$out" ]; then
    if [ -n "$positional" ]; then out=agent-$positional; else out=.; fi
fi
[ -n "$name" ] || name=client
# The server compares NAME with the CN and the DNS names exactly (ASCII case-insensitively): keep it
# to what a service ID and a DNS name can both hold, and to the CN's 64 characters. (Spelt out: a
# range like A-Z may match accented letters in some locales.)
alnum=ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789
valid="^[$alnum][$alnum._~-]{0,63}\$"
if [[ ! $name =~ $valid ]]; then
    echo "$0: NAME must be 1 to 64 letters, digits, '.', '_', '~' or '-' (starting with a letter or digit): $name" >&2
    exit 2
fi
if [ -z "$ca_cert" ]; then
    ca_cert=server.cert.pem
    [ -e "$ca_cert" ] || ca_cert=tls/server.cert.pem
fi
[ -n "$ca_key" ] || ca_key=$(dirname -- "$ca_cert")/server.key.pem
for f in "$ca_cert" "$ca_key"; do
    if [ ! -r "$f" ]; then
        echo "$0: cannot read $f (make it with ../rendezvous/make-server-cert.sh, or pass --ca-cert/--ca-key)" >&2
        exit 2
    fi
done
issued=$(dirname -- "$ca_cert")/ca/issued
mkdir -p -- "$out" "$issued"
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
umask 077

# Generate a new key for client
openssl genrsa -out "$out/client.key.pem" 4096
# Generate a new cert request for the client with the key
openssl req -subj "/CN=$name" -new -key "$out/client.key.pem" -out "$work/client.csr"
# Sign the cert with server cert as CA
{
    echo extendedKeyUsage = clientAuth
    echo "subjectAltName = DNS:$name"
} > "$work/client-extfile.cnf"
openssl x509 -req -days 3650 -sha256 -in "$work/client.csr" -CA "$ca_cert" -CAkey "$ca_key" \
    -CAcreateserial -out "$out/client.cert.pem" -extfile "$work/client-extfile.cnf"

chmod 600 "$out/client.key.pem"
chmod 644 "$out/client.cert.pem"
# The agent verifies the server with --ca-cert=server.cert.pem: put it next to the client's files.
if [ ! "$out/server.cert.pem" -ef "$ca_cert" ]; then
    cp -- "$ca_cert" "$out/server.cert.pem"
    chmod 644 "$out/server.cert.pem"
fi
# Keep a copy by serial number (as openssl prints it), for revoke-client-cert.sh --serial.
serial=$(openssl x509 -in "$out/client.cert.pem" -noout -serial)
serial=${serial#serial=}
cp -- "$out/client.cert.pem" "$issued/$serial.pem"
chmod 644 "$issued/$serial.pem"
echo "wrote $out/client.key.pem (keep it secret), $out/client.cert.pem (CN=$name, DNS:$name, serial $serial)" \
    "and $out/server.cert.pem; a copy is in $issued/$serial.pem" >&2
cat <<EOF
Bind it to its service in the server's config.toml, then reload the server (SIGHUP):
  [remote_service.<ID>]
  agent_identity = "$name"
EOF
