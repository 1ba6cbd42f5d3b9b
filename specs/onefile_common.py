"""What both single-file specs share; executed by specs/*.spec (not a PyInstaller spec itself).

Every choice here is for the shipped executable:
- one file, console program, no UPX (it breaks on some kernels/AV and slows start-up);
- websockets' C speedups (``websockets.speedups``) are a hidden import, and the build
  fails if PyInstaller could not find them: the relay's masking would silently fall back
  to pure Python otherwise (``scripts/check_glibc.py --require websockets/speedups`` checks
  the built binary too);
- the standard-library parts a network daemon never uses are excluded, to keep the file
  (and the tens of MB it unpacks at every start) small;
- ELF binaries are stripped on Linux;
- on Linux a run-time hook (hooks/rth_ca_bundle.py) points the bundled OpenSSL at the host's CA
  bundle (SSL_CERT_FILE) unless the user set SSL_CERT_FILE/SSL_CERT_DIR: the build machine's
  compiled-in CA location does not exist on every distribution;
- ``runtime_tmpdir=None``: the bootloader unpacks into ``$TMPDIR`` (then ``$TEMP``, ``$TMP``,
  ``/tmp``) as ``_MEIxxxxxx`` and removes it at exit, SIGTERM included (the bootloader forwards
  the signal to the Python process and cleans up after it). SIGKILL leaves the folder behind:
  point TMPDIR at a tmpfs that is wiped (systemd ``PrivateTmp=yes`` / ``RuntimeDirectory=``;
  compose ``tmpfs: /tmp``), and at one that is not mounted ``noexec``.
"""

from __future__ import annotations

import os
import sys

# Modules that nothing in reverse_websockify, websockets or platformdirs imports at run time.
EXCLUDES = [
    "tkinter", "_tkinter", "turtle", "turtledemo", "idlelib",
    "unittest", "doctest", "pydoc", "pydoc_data", "pdb", "test", "lib2to3",
    "distutils", "setuptools", "pkg_resources", "pip", "ensurepip", "venv",
    "sqlite3", "_sqlite3", "dbm", "curses", "_curses", "readline",
    "xmlrpc", "xml", "pyexpat", "_elementtree",
    "multiprocessing", "concurrent.futures.process",
    "lzma", "_lzma", "bz2", "_bz2",
    "ftplib", "imaplib", "poplib", "smtplib", "nntplib", "telnetlib", "mailbox",
    "tomli_w", "IPython", "numpy", "PIL",
    # CJK codecs: ~1 MB of extension modules unpacked at every start, for text this program never has.
    "_multibytecodec", "_codecs_cn", "_codecs_hk", "_codecs_iso2022", "_codecs_jp", "_codecs_kr", "_codecs_tw",
    # websockets' other implementations (the package uses websockets.asyncio only).
    "websockets.legacy", "websockets.sync", "websockets.trio", "websockets.cli", "websockets.__main__",
]
if sys.platform != "win32":
    # platformdirs imports its Windows backend (and so ctypes) only on Windows.
    EXCLUDES += ["platformdirs.windows", "ctypes", "_ctypes"]

HIDDEN_IMPORTS = [
    "websockets.speedups",
    # Imported inside functions (kept off the --version path); listed so a refactor cannot drop them.
    "reverse_websockify.config",
    "reverse_websockify.server",
    "reverse_websockify.agent",
    "reverse_websockify.tls",
    "reverse_websockify.status",
]


def onefile(name: str, entry: str, g: dict) -> None:
    """Define the Analysis/PYZ/EXE of one executable in the spec's globals ``g``."""
    Analysis, PYZ, EXE = g["Analysis"], g["PYZ"], g["EXE"]
    root = os.path.dirname(g["SPECPATH"])
    hooks = os.path.join(g["SPECPATH"], "hooks")
    runtime_hooks = [os.path.join(hooks, "rth_ca_bundle.py")] if sys.platform.startswith("linux") else []
    a = Analysis(
        [os.path.join(root, "scripts", entry)],
        pathex=[root],
        binaries=[],
        datas=[],
        hiddenimports=HIDDEN_IMPORTS,
        hookspath=[hooks],
        hooksconfig={},
        runtime_hooks=runtime_hooks,
        excludes=EXCLUDES,
        noarchive=False,
        optimize=0,
    )
    speedups = [dest for dest, _src, kind in a.binaries if dest.replace("\\", "/").startswith("websockets/speedups")]
    if not speedups:
        raise SystemExit("websockets.speedups (the C extension) was not found: install a websockets wheel "
                         "with its compiled speedups before building")
    pyz = PYZ(a.pure)
    exe = EXE(
        pyz,
        a.scripts,
        a.binaries,
        a.datas,
        [],
        name=name,  # PyInstaller adds .exe on Windows
        debug=False,
        bootloader_ignore_signals=False,  # forward SIGTERM/SIGINT to Python, then clean up _MEI*
        strip=sys.platform.startswith("linux"),
        upx=False,
        runtime_tmpdir=None,
        console=True,
        disable_windowed_traceback=False,
        argv_emulation=False,
        target_arch=None,
        codesign_identity=None,
        entitlements_file=None,
    )
    g.update(a=a, pyz=pyz, exe=exe)
