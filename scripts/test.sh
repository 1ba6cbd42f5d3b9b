#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian/Ubuntu machine: installs the real
# tools the tests drive (nginx, openssl, tinyproxy, shellcheck, ...) when they
# are missing, installs the package with its test extras, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(nginx openssl tinyproxy shellcheck docker-compose systemd iperf3 wrk apache2-utils curl procps chromium redis-server redis-tools openssh-server openssh-client postgresql)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
exec python3 -m pytest -q "$@"
