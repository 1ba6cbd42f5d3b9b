#!/usr/bin/env bash
# Build both single-file executables into dist/:
#   dist/reverse_websockify_server
#   dist/reverse_websockify_agent_service_side
# (".exe" on Windows). The one documented build command:
#
#   bash scripts/build_binaries.sh
#
# From a clean checkout it makes a virtual environment (build/venv), installs the pinned build
# inputs (scripts/build-constraints.txt) and the package, and runs PyInstaller on specs/*.spec.
#
# Environment:
#   PYTHON=python3.12   the interpreter to build with (default: python3). It must have a shared
#                       libpython (distribution packages, python.org, setup-python, pyenv with
#                       --enable-shared; NOT the static manylinux ones). The glibc it was built
#                       against sets the binaries' glibc floor (scripts/check_glibc.py).
#   RW_BUILD_VENV=0     use $PYTHON's own environment instead of build/venv (it must already have
#                       PyInstaller; nothing is installed).
#   SOURCE_DATE_EPOCH   defaults to the last commit's time, for reproducible archives.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
export PYTHONHASHSEED=0
export PYTHONDONTWRITEBYTECODE=1
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)"
fi
export SOURCE_DATE_EPOCH
# No user site-packages or PYTHONPATH leaking into what gets bundled.
export PYTHONNOUSERSITE=1
unset PYTHONPATH || true

if [ "${RW_BUILD_VENV:-1}" != "0" ]; then
    VENV="$ROOT/build/venv"
    if [ ! -x "$VENV/bin/python" ] && [ ! -x "$VENV/Scripts/python.exe" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    if [ -x "$VENV/bin/python" ]; then PY="$VENV/bin/python"; else PY="$VENV/Scripts/python.exe"; fi
    # The package with the dependencies pyproject.toml declares, pinned by the constraints file.
    "$PY" -m pip install --quiet --disable-pip-version-check -c scripts/build-constraints.txt pyinstaller .
    # A dependency that the constraints file does not pin makes the build depend on the day it ran.
    "$PY" - <<'PY'
import re
from importlib.metadata import distributions
pinned = {re.split(r"[=<>;\s]", line, 1)[0].lower().replace("_", "-")
          for line in open("scripts/build-constraints.txt") if line.strip() and not line.startswith("#")}
ignore = {"pip", "setuptools", "wheel", "reverse-websockify"}
loose = sorted(d.metadata["Name"] for d in distributions()
               if d.metadata["Name"].lower().replace("_", "-") not in pinned | ignore)
if loose:
    print("WARNING: not pinned in scripts/build-constraints.txt (the build is not reproducible): " + ", ".join(loose))
PY
else
    PY="$PYTHON"
fi

# PyInstaller bundles the interpreter's shared library: a Python without one (the static builds
# of the manylinux images, some conda/uv builds) cannot make an executable.
"$PY" -c 'from PyInstaller.depend.bindepend import get_python_library_path as p; print("libpython:", p())' || {
    echo "$PYTHON has no shared libpython; use one built with --enable-shared (pyenv with" \
         "PYTHON_CONFIGURE_OPTS=--enable-shared, Debian/RHEL packages, python.org, setup-python)" >&2; exit 1; }
"$PY" -c 'import websockets.speedups' || {
    echo "websockets is installed without its C speedups; install a binary wheel" >&2; exit 1; }

rm -rf dist/reverse_websockify_server dist/reverse_websockify_agent_service_side \
       dist/reverse_websockify_server.exe dist/reverse_websockify_agent_service_side.exe
for name in reverse_websockify_server reverse_websockify_agent_service_side; do
    echo "== building dist/$name"
    "$PY" -m PyInstaller --clean --noconfirm --log-level WARN \
        --distpath dist --workpath build/pyinstaller "specs/$name.spec"
done

for name in reverse_websockify_server reverse_websockify_agent_service_side; do
    exe="dist/$name"; [ -e "$exe" ] || exe="dist/$name.exe"
    "./$exe" --version
done
ls -l dist/
