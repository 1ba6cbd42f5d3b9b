# Replaces pyinstaller-hooks-contrib's hook-websockets.py (collect_submodules("websockets")):
# websockets loads its submodules lazily, so keep them all, except the implementations that
# reverse_websockify never uses (legacy, sync, trio) and its own command-line client.
from PyInstaller.utils.hooks import collect_submodules

_UNUSED = ("websockets.legacy", "websockets.sync", "websockets.trio", "websockets.cli", "websockets.__main__")

hiddenimports = collect_submodules(
    "websockets", filter=lambda name: not any(name == u or name.startswith(u + ".") for u in _UNUSED)
)
hiddenimports.append("websockets.speedups")
