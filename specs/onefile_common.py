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
- on POSIX a run-time hook (hooks/rth_launcher_watch.py) makes the Python process shut down
  cleanly (SIGTERM to itself) when its launcher dies, e.g. of SIGKILL, instead of living on as an
  orphan that holds the ports or the tunnel;
- ``runtime_tmpdir=None``: the bootloader unpacks into ``$TMPDIR`` (then ``$TEMP``, ``$TMP``,
  ``/tmp``) as ``_MEIxxxxxx`` and removes it at exit, SIGTERM included (the bootloader forwards
  the signal to the Python process and cleans up after it). SIGKILL of the launcher leaves the
  folder behind: point TMPDIR at a place that is not mounted ``noexec`` and gets cleaned (the
  systemd units use ``CacheDirectory=`` + an ``ExecStartPre`` that removes stale ``_MEI*``; /run is
  noexec on Debian/Ubuntu; compose mounts ``tmpfs: /tmp:exec``). A fixed ``runtime_tmpdir`` is not
  used: it would pin one path for every host, and TMPDIR already lets each deployment choose.
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
    # platformdirs imports its Windows backend only on Windows. (ctypes stays: allocator.py uses it.)
    EXCLUDES += ["platformdirs.windows"]


def hidden_imports(drop: list[str]) -> list[str]:
    # Every module of the package: most are imported inside functions (kept off the --version
    # path), and a new one must not be forgotten in the executables.
    from PyInstaller.utils.hooks import collect_submodules

    modules = collect_submodules("reverse_websockify")
    if "reverse_websockify.server" not in modules:
        raise SystemExit("cannot list reverse_websockify's modules: is the package installed in the build env?")
    kept = [m for m in modules if not any(m == d or m.startswith(d + ".") for d in drop)]
    return ["websockets.speedups", *kept]


def onefile(name: str, entry: str, g: dict, drop: list[str] = ()) -> None:
    """Define the Analysis/PYZ/EXE of one executable in the spec's globals ``g``.

    ``drop``: modules (with their submodules) that this executable never runs, e.g. the server's
    modules and prometheus_client in the agent; excluded from the analysis.
    """
    drop = list(drop)
    Analysis, PYZ, EXE = g["Analysis"], g["PYZ"], g["EXE"]
    root = os.path.dirname(g["SPECPATH"])
    hooks = os.path.join(g["SPECPATH"], "hooks")
    runtime_hooks = []
    if sys.platform.startswith("linux"):
        runtime_hooks.append(os.path.join(hooks, "rth_ca_bundle.py"))
    if os.name == "posix":
        runtime_hooks.append(os.path.join(hooks, "rth_launcher_watch.py"))
    a = Analysis(
        [os.path.join(root, "scripts", entry)],
        pathex=[root],
        binaries=[],
        datas=[],
        hiddenimports=hidden_imports(drop),
        hookspath=[hooks],
        hooksconfig={},
        runtime_hooks=runtime_hooks,
        excludes=EXCLUDES + drop,
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
