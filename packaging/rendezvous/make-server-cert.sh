#!/bin/bash
# Make the self-signed server certificate nginx presents on 443. It also serves as the CA that
# signs the agents' client certificates (../agent/make-client-cert.sh).
#
# Usage: ./make-server-cert.sh CN [OUTPUT_DIR]
#   CN          the server's internet IP address or host name, exactly as agents write it in
#               --reverse-websockify=wss://CN/forward_to_me/<ID>
#   OUTPUT_DIR  where to write server.key.pem and server.cert.pem (default: tls)
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

mkdir -p -- "$dir"
# The key is created readable by its owner only.
umask 077
openssl req -x509 -nodes -days 3650 -newkey rsa:2048 -keyout "$dir/server.key.pem" -out "$dir/server.cert.pem" \
    -subj "/C=CN/ST=Beijing/L=Beijing/O=MyCompany/OU=MyBusinessUnit/CN=$cn"
chmod 600 "$dir/server.key.pem"
chmod 644 "$dir/server.cert.pem"
echo "wrote $dir/server.key.pem (keep it secret) and $dir/server.cert.pem (CN=$cn)" >&2
