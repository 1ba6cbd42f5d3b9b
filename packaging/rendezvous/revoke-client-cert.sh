#!/bin/bash
# Revoke agents' client certificates: record them in the CA's revocation database and re-sign the
# CRL (crl.pem, next to the CA certificate) that nginx (ssl_crl) and the server (client_crl) read.
# Run it where the CA key is (the rendezvous host). See docs/agent-identity.md.
#
# Usage: ./revoke-client-cert.sh [OPTIONS] CERT_FILE...    revoke these certificates
#        ./revoke-client-cert.sh [OPTIONS] --serial HEX     revoke by serial number (repeatable)
#        ./revoke-client-cert.sh [OPTIONS] --refresh        only re-sign crl.pem (new nextUpdate)
#        ./revoke-client-cert.sh [OPTIONS] --list           the issued and the revoked certificates
# Options:
#   --ca-cert PATH   the CA: the server certificate (default: server.cert.pem, else tls/server.cert.pem)
#   --ca-key PATH    its key (default: server.key.pem next to --ca-cert)
#   --reason WORD    CRL reason: unspecified (default), keyCompromise, CACompromise,
#                    affiliationChanged, superseded, cessationOfOperation
#   --crl-days N     how long the new CRL is valid (default 3650). Once it is past, nginx refuses
#                    EVERY client certificate: run --refresh well before (it prints the date).
#
# State, next to the CA certificate (made on first use, so it also works for a CA made by hand with
# the original README's openssl commands):
#   crl.pem     the CRL, signed by the CA
#   ca/         openssl ca bookkeeping: openssl.cnf, index.txt (revocations), crlnumber, and
#               issued/<SERIAL>.pem, the copies make-client-cert.sh keeps of what it signs
set -euo pipefail

usage() {
    sed -n '/^# Usage:/,/^# State,/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "$0: $*" >&2
    exit 2
}

REASONS=" unspecified keyCompromise CACompromise affiliationChanged superseded cessationOfOperation "
ca_cert=
ca_key=
reason=
crl_days=3650
mode=revoke
files=()
serials=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ca-cert) [ $# -ge 2 ] || usage; ca_cert=$2; shift 2 ;;
        --ca-key) [ $# -ge 2 ] || usage; ca_key=$2; shift 2 ;;
        --reason) [ $# -ge 2 ] || usage; reason=$2; shift 2 ;;
        --crl-days) [ $# -ge 2 ] || usage; crl_days=$2; shift 2 ;;
        --serial) [ $# -ge 2 ] || usage; serials+=("$2"); shift 2 ;;
        --ca-cert=*) ca_cert=${1#*=}; shift ;;
        --ca-key=*) ca_key=${1#*=}; shift ;;
        --reason=*) reason=${1#*=}; shift ;;
        --crl-days=*) crl_days=${1#*=}; shift ;;
        --serial=*) serials+=("${1#*=}"); shift ;;
        --refresh) mode=refresh; shift ;;
        --list) mode=list; shift ;;
        -h | --help) usage ;;
        --) shift; files+=("$@"); break ;;
        -*) usage ;;
        *) files+=("$1"); shift ;;
    esac
done
if [ "$mode" = revoke ]; then
    [ $((${#files[@]} + ${#serials[@]})) -gt 0 ] || usage
elif [ $((${#files[@]} + ${#serials[@]})) -gt 0 ]; then
    usage
fi
case "$crl_days" in
    "" | *[!0-9]* | 0) die "--crl-days must be a whole number of days >= 1: $crl_days" ;;
esac
if [ -n "$reason" ] && [[ $REASONS != *" $reason "* ]]; then
    die "--reason must be one of:$REASONS(got $reason)"
fi

# The CA: as given, else where make-client-cert.sh and make-server-cert.sh put it.
if [ -z "$ca_cert" ]; then
    ca_cert=server.cert.pem
    [ -e "$ca_cert" ] || ca_cert=tls/server.cert.pem
fi
ca_dir=$(dirname -- "$ca_cert")
[ -n "$ca_key" ] || ca_key=$ca_dir/server.key.pem
for f in "$ca_cert" "$ca_key"; do
    [ -r "$f" ] || die "cannot read $f (pass --ca-cert/--ca-key, or run this where server.cert.pem or tls/ is)"
done
absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}
ca_cert=$(absolute "$ca_cert")
ca_key=$(absolute "$ca_key")
state=$ca_dir/ca
crl=$ca_dir/crl.pem

# openssl prints a serial as even-length upper-case hex (no 0x, no colons, no leading 00 byte);
# index.txt, issued/ and the CRL all use that form, so every serial given is brought to it.
normal_serial() {
    local s=${1#serial=}
    s=${s#0x}
    s=${s#0X}
    s=${s//:/}
    s=$(printf '%s' "$s" | tr '[:lower:]' '[:upper:]')
    case "$s" in
        "" | *[!0-9A-F]*) die "not a hexadecimal serial number: $1" ;;
    esac
    while [ "${s#0}" != "$s" ]; do s=${s#0}; done
    [ -n "$s" ] || s=0
    [ $((${#s} % 2)) -eq 0 ] || s=0$s
    printf '%s\n' "$s"
}
cert_serial() {
    normal_serial "$(openssl x509 -in "$1" -noout -serial)"
}

# The openssl ca state, each piece made only if missing (a CA made by hand has none of it).
init_state() {
    mkdir -p -- "$state/issued"
    [ -e "$state/index.txt" ] || : >"$state/index.txt"
    [ -e "$state/index.txt.attr" ] || echo "unique_subject = no" >"$state/index.txt.attr"
    [ -e "$state/crlnumber" ] || echo 1000 >"$state/crlnumber"
    [ -e "$state/openssl.cnf" ] || cat >"$state/openssl.cnf" <<'EOF'
# openssl ca state of the rendezvous CA (server.cert.pem), kept by revoke-client-cert.sh.
# Client certificates are signed by make-client-cert.sh (openssl x509 -req; the serial counter is
# ../server.cert.srl) and copied to issued/<SERIAL>.pem; this database only records revocations.
# By hand, from this folder:
#   openssl ca -config openssl.cnf -cert ../server.cert.pem -keyfile ../server.key.pem \
#       -gencrl -crldays 3650 -out ../crl.pem
[ ca ]
default_ca = rendezvous_ca

[ rendezvous_ca ]
dir = .
database = $dir/index.txt
crlnumber = $dir/crlnumber
unique_subject = no
default_md = sha256
default_crl_days = 3650
EOF
}

# openssl ca, run from the state folder (openssl.cnf's paths are relative to it); quiet unless it fails.
ca() {
    local out
    if ! out=$(cd -- "$state" && openssl ca -batch -config openssl.cnf -cert "$ca_cert" -keyfile "$ca_key" "$@" 2>&1); then
        echo "$out" >&2
        echo "$0: openssl ca $* failed" >&2
        exit 1
    fi
}

is_revoked() {
    awk -F '\t' -v s="$1" '$1 == "R" && $4 == s { found = 1 } END { exit !found }' "$state/index.txt"
}

# Every argument is checked before anything is revoked, so that a typo revokes nothing.
check_file() {
    local file=$1
    [ -r "$file" ] || die "cannot read $file"
    openssl x509 -in "$file" -noout >/dev/null 2>&1 || die "$file is not a PEM certificate"
    if cmp -s <(openssl x509 -in "$file" -outform DER) <(openssl x509 -in "$ca_cert" -outform DER); then
        die "$file is the CA certificate itself: to replace it, see docs/agent-identity.md"
    fi
    # Serial numbers mean something only per issuer: refuse a certificate this CA did not sign.
    if ! openssl verify -no_check_time -CAfile "$ca_cert" "$file" >/dev/null 2>&1; then
        die "$file was not signed by $ca_cert: revoking it here would change nothing"
    fi
}

revoke_file() {
    local file=$1 serial
    serial=$(cert_serial "$file")
    if is_revoked "$serial"; then
        echo "serial $serial ($(subject "$file")) was already revoked" >&2
        return
    fi
    local why=()
    [ -z "$reason" ] || why=(-crl_reason "$reason")
    ca -revoke "$(absolute "$file")" ${why[@]+"${why[@]}"}
    echo "revoked serial $serial ($(subject "$file"))" >&2
}

revoke_serial() {
    local serial
    serial=$(normal_serial "$1")
    if [ -e "$state/issued/$serial.pem" ]; then
        check_file "$state/issued/$serial.pem"
        revoke_file "$state/issued/$serial.pem"
    elif is_revoked "$serial"; then
        echo "serial $serial was already revoked" >&2
    else
        # No copy of the certificate (made by hand, or before this script): record the serial alone,
        # in index.txt's own format; the CRL needs only the serial and the revocation date.
        printf 'R\t491231235959Z\t%s%s\t%s\tunknown\t/CN=unknown\n' \
            "$(date -u +%y%m%d%H%M%SZ)" "${reason:+,$reason}" "$serial" >>"$state/index.txt"
        echo "revoked serial $serial (no copy under $state/issued/: recorded by serial only)" >&2
    fi
}

subject() {
    openssl x509 -in "$1" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'
}

write_crl() {
    local new=$crl.new.$$
    ca -gencrl -crldays "$crl_days" -out "$(absolute "$new")"
    chmod 644 "$new"
    mv -f -- "$new" "$crl"
    local count next
    count=$(openssl crl -in "$crl" -noout -text | grep -c 'Serial Number:' || true)
    next=$(openssl crl -in "$crl" -noout -nextupdate | sed 's/^nextUpdate=//')
    echo "wrote $crl: $count revoked certificate(s), valid until $next (run $0 --refresh before then)" >&2
}

list() {
    local f serial status
    printf '%-42s %-8s %-25s %s\n' SERIAL STATUS "NOT AFTER" SUBJECT
    for f in "$state"/issued/*.pem; do
        [ -e "$f" ] || continue
        serial=$(cert_serial "$f")
        status=valid
        if is_revoked "$serial"; then status=revoked; fi
        printf '%-42s %-8s %-25s %s\n' "$serial" "$status" \
            "$(openssl x509 -in "$f" -noout -enddate | sed 's/^notAfter=//')" "$(subject "$f")"
    done
    # Revoked without a copy under issued/.
    awk -F '\t' '$1 == "R" { print $4 }' "$state/index.txt" | while read -r serial; do
        [ -e "$state/issued/$serial.pem" ] || printf '%-42s %-8s %-25s %s\n' "$serial" revoked - "(no copy)"
    done
}

umask 022
init_state
case "$mode" in
    list) list; exit 0 ;;
    revoke)
        for f in ${files[@]+"${files[@]}"}; do check_file "$f"; done
        for s in ${serials[@]+"${serials[@]}"}; do normal_serial "$s" >/dev/null; done
        for f in ${files[@]+"${files[@]}"}; do revoke_file "$f"; done
        for s in ${serials[@]+"${serials[@]}"}; do revoke_serial "$s"; done
        ;;
esac
write_crl
cat <<EOF
Now make both readers of $crl take it (they read it only at start and on reload):
  nginx:  docker compose exec nginx nginx -s reload        (without docker: nginx -s reload)
  server: docker compose kill -s HUP reverse_websockify_server
          (systemd: systemctl reload reverse-websockify-server; otherwise: kill -HUP <server pid>)
nginx then refuses the revoked certificates at their next handshake; the server's reload also cuts
off an agent still attached with one (nginx keeps already-open tunnels on its old workers).
EOF
