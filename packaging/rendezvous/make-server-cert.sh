#!/bin/bash
# Make the self-signed server certificate nginx presents on 443. It also serves as the CA that
# signs the agents' client certificates (../agent/make-client-cert.sh) and their CRL
# (revoke-client-cert.sh, which must sit next to this script).
#
# Usage: ./make-server-cert.sh CN [OUTPUT_DIR]
#   CN          the server's internet IP address or host name, exactly as agents write it in
#               --reverse-websockify=wss://CN/forward_to_me/<ID>
#   OUTPUT_DIR  where to write server.key.pem and server.cert.pem (default: tls)
# It also writes OUTPUT_DIR/crl.pem, an empty CRL valid for 3650 days (nginx.conf's ssl_crl and
# config.toml's client_crl), and the CA's bookkeeping in OUTPUT_DIR/ca/ (see revoke-client-cert.sh).
# Run it again only to replace the CA: every client certificate it signed then stops working.
set -euo pipefail

usage() {
    echo "usage: $0 CN [OUTPUT_DIR]" >&2
    echo "  CN: the server's internet IP or host name (as in the agents' wss:// URL), e.g. my.rendezvous.com" >&2
    echo "  OUTPUT_DIR: where to write server.key.pem and server.cert.pem (default: tls)" >&2
    exit 2
}

if [ $# -lt 1 ] || [ $# -gt 2 ] || [ -z "$1" ]; then
    usage
fi
case "$1" in
    -h | --help) usage ;;
    */*) echo "$0: CN must not contain '/': $1" >&2; exit 2 ;;
esac
cn=$1
dir=${2:-tls}
revoke=$(dirname -- "$0")/revoke-client-cert.sh
if [ ! -r "$revoke" ]; then
    echo "$0: $revoke is missing: copy it next to this script (packaging/rendezvous/)" >&2
    exit 2
fi

mkdir -p -- "$dir"
if [ -e "$dir/server.key.pem" ]; then
    echo "$0: replacing the CA in $dir: client certificates signed by the old one stop working" >&2
fi
if [ -e "$dir/ca" ]; then
    # The old CA's revocation database and issued copies mean nothing to the new CA.
    old=$dir/ca.replaced-$(date -u +%Y%m%dT%H%M%SZ)
    mv -- "$dir/ca" "$old"
    echo "$0: the old CA's state is kept in $old" >&2
fi
# The key is created readable by its owner only.
umask 077
openssl req -x509 -nodes -days 3650 -newkey rsa:2048 -keyout "$dir/server.key.pem" -out "$dir/server.cert.pem" \
    -subj "/C=CN/ST=Beijing/L=Beijing/O=MyCompany/OU=MyBusinessUnit/CN=$cn"
chmod 600 "$dir/server.key.pem"
chmod 644 "$dir/server.cert.pem"
echo "wrote $dir/server.key.pem (keep it secret) and $dir/server.cert.pem (CN=$cn)" >&2
# The CA's (empty) CRL and its openssl ca state; its own messages go to stderr.
bash "$revoke" --ca-cert "$dir/server.cert.pem" --ca-key "$dir/server.key.pem" --refresh >/dev/null
