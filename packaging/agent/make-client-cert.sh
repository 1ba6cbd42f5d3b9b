#!/bin/bash
# Make a client certificate for an agent, signed by the rendezvous server's self-signed certificate
# (made by ../rendezvous/make-server-cert.sh), which nginx trusts via ssl_client_certificate.
# Run it where the server's key is (the rendezvous host), then copy OUTPUT_DIR's
# client.cert.pem, client.key.pem and server.cert.pem to the agent's host.
#
# Usage: ./make-client-cert.sh [--ca-cert PATH] [--ca-key PATH] [--out DIR] [--cn NAME]
#   --ca-cert  the server certificate that signs (default: server.cert.pem)
#   --ca-key   its key (default: server.key.pem)
#   --out      where to write client.key.pem and client.cert.pem (default: .)
#   --cn       the certificate's subject CN, e.g. the agent's name (default: client)
set -euo pipefail

usage() {
    echo "usage: $0 [--ca-cert PATH] [--ca-key PATH] [--out DIR] [--cn NAME]" >&2
    echo "  defaults: --ca-cert server.cert.pem --ca-key server.key.pem --out . --cn client" >&2
    exit 2
}

ca_cert=server.cert.pem
ca_key=server.key.pem
out=.
cn=client
while [ $# -gt 0 ]; do
    case "$1" in
        --ca-cert) [ $# -ge 2 ] || usage; ca_cert=$2; shift 2 ;;
        --ca-key) [ $# -ge 2 ] || usage; ca_key=$2; shift 2 ;;
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --cn) [ $# -ge 2 ] || usage; cn=$2; shift 2 ;;
        --ca-cert=*) ca_cert=${1#*=}; shift ;;
        --ca-key=*) ca_key=${1#*=}; shift ;;
        --out=*) out=${1#*=}; shift ;;
        --cn=*) cn=${1#*=}; shift ;;
        *) usage ;;
    esac
done
case "$cn" in
    "" | */*) echo "$0: --cn must be non-empty and must not contain '/': $cn" >&2; exit 2 ;;
esac
for f in "$ca_cert" "$ca_key"; do
    if [ ! -r "$f" ]; then
        echo "$0: cannot read $f (make it with ../rendezvous/make-server-cert.sh, or pass --ca-cert/--ca-key)" >&2
        exit 2
    fi
done

mkdir -p -- "$out"
work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
umask 077

# Generate a new key for client
openssl genrsa -out "$out/client.key.pem" 4096
# Generate a new cert request for the client with the key
openssl req -subj "/CN=$cn" -new -key "$out/client.key.pem" -out "$work/client.csr"
# Sign the cert with server cert as CA
echo extendedKeyUsage = clientAuth > "$work/client-extfile.cnf"
openssl x509 -req -days 3650 -sha256 -in "$work/client.csr" -CA "$ca_cert" -CAkey "$ca_key" \
    -CAcreateserial -out "$out/client.cert.pem" -extfile "$work/client-extfile.cnf"

chmod 600 "$out/client.key.pem"
chmod 644 "$out/client.cert.pem"
# The agent verifies the server with --ca-cert=server.cert.pem: put it next to the client's files.
if [ ! "$out/server.cert.pem" -ef "$ca_cert" ]; then
    cp -- "$ca_cert" "$out/server.cert.pem"
    chmod 644 "$out/server.cert.pem"
fi
echo "wrote $out/client.key.pem (keep it secret), $out/client.cert.pem (CN=$cn) and $out/server.cert.pem" >&2
