#!/usr/bin/env bash
# Package the built executables of one platform as release assets:
#
#   bash scripts/make_release_assets.sh PLATFORM [DIST_DIR] [OUT_DIR]
#
# PLATFORM is linux-x86_64, linux-arm64, macos-arm64, windows-x86_64, ... It writes into OUT_DIR
# (default: release/):
#   reverse_websockify_server-PLATFORM[.exe]              the bare executables (rename after download)
#   reverse_websockify_agent_service_side-PLATFORM[.exe]
# and, for linux-*, the two kits (tar.gz; the folder inside keeps the executables' own names):
#   reverse_websockify-rendezvous-VERSION-PLATFORM.tar.gz   server + packaging/rendezvous/*
#       (docker-compose.yaml, nginx.conf, config.toml, make-server-cert.sh) and, for running it
#       without docker, packaging/server/reverse-websockify-server.service
#   reverse_websockify-agent-VERSION-PLATFORM.tar.gz        agent + packaging/agent/*
#       (reverse-websockify-agent@.service, agent.env.example, make-client-cert.sh, sysusers.conf)
# Archives are reproducible: sorted names, owner 0, mtime = SOURCE_DATE_EPOCH (default: last commit).
# SHA256SUMS over all platforms is written by the release job (sha256sum * > SHA256SUMS).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PLATFORM="${1:?usage: $0 PLATFORM [DIST_DIR] [OUT_DIR]}"
DIST="$(cd "${2:-$ROOT/dist}" && pwd)"
OUT="${3:-$ROOT/release}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/reverse_websockify/__init__.py")"
[ -n "$VERSION" ] || { echo "cannot read __version__ from reverse_websockify/__init__.py" >&2; exit 1; }
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 1700000000)"
fi

SUFFIX=""
case "$PLATFORM" in windows-*) SUFFIX=".exe" ;; esac
SERVER="reverse_websockify_server"
AGENT="reverse_websockify_agent_service_side"

for name in "$SERVER" "$AGENT"; do
    [ -f "$DIST/$name$SUFFIX" ] || { echo "missing $DIST/$name$SUFFIX (run scripts/build_binaries.sh)" >&2; exit 1; }
    cp "$DIST/$name$SUFFIX" "$OUT/$name-$PLATFORM$SUFFIX"
    chmod 0755 "$OUT/$name-$PLATFORM$SUFFIX"
done

kit() {  # kit ARCHIVE_BASENAME EXECUTABLE FILE...
    local base="$1" exe="$2"; shift 2
    local stage
    stage="$(mktemp -d)"
    mkdir "$stage/$base"
    install -m 0755 "$DIST/$exe" "$stage/$base/$exe"
    local f
    for f in "$@"; do
        [ -f "$ROOT/$f" ] || { echo "missing $f for the kit $base" >&2; rm -rf "$stage"; exit 1; }
        if [[ "$f" == *.sh ]]; then mode=0755; else mode=0644; fi
        install -m "$mode" "$ROOT/$f" "$stage/$base/$(basename "$f")"
    done
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
        -C "$stage" -cf - "$base" | gzip -9 -n > "$OUT/$base.tar.gz"
    rm -rf "$stage"
    echo "$OUT/$base.tar.gz:"
    tar -tvzf "$OUT/$base.tar.gz" | sed 's/^/    /'
}

case "$PLATFORM" in
linux-*)
    kit "reverse_websockify-rendezvous-$VERSION-$PLATFORM" "$SERVER" \
        packaging/rendezvous/docker-compose.yaml packaging/rendezvous/nginx.conf \
        packaging/rendezvous/config.toml packaging/rendezvous/make-server-cert.sh \
        packaging/server/reverse-websockify-server.service
    kit "reverse_websockify-agent-$VERSION-$PLATFORM" "$AGENT" \
        packaging/agent/reverse-websockify-agent@.service packaging/agent/agent.env.example \
        packaging/agent/make-client-cert.sh packaging/agent/reverse-websockify.sysusers.conf
    ;;
esac

ls -l "$OUT"
