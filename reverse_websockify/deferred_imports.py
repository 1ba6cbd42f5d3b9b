"""Modules that websockets imports and the relay does not use, loaded at their first use instead of at start.

websockets imports ``importlib.metadata`` (websockets.version reads its version from it in a
development checkout, never in a release) and ``urllib.request`` (websockets.proxy finds proxies
with it, which only an agent dialing out calls). Between them they bring 40 more modules (email,
zipfile, http.client...): 2.1 MiB of an idle server's 31 MiB, and 0.9 MiB of an agent's, in every
process of a fleet, for code that never runs. So the programs put a placeholder in their place
before anything imports them; the first attribute read from it imports the real module.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

UNUSED = ("importlib.metadata", "urllib.request")

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute is read from it; then the real one is imported."""

    def __getattr__(self, attribute: str) -> object:
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # tools that walk sys.modules (inspect, pytest) load nothing
        return getattr(_load(self), attribute)


def _load(placeholder: _Deferred) -> types.ModuleType:
    name = placeholder.__name__
    with _lock:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
        module = importlib.import_module(name)
        placeholder.__dict__.update(module.__dict__)  # whoever kept the placeholder now reads the real module
    return module


def defer(name: str) -> bool:
    """Put a placeholder for ``name`` in sys.modules unless it is imported already; True when placed."""
    if name in sys.modules:
        return False
    parent_name, _, child = name.rpartition(".")
    parent = importlib.import_module(parent_name)
    placeholder = _Deferred(name)
    sys.modules[name] = placeholder
    setattr(parent, child, placeholder)
    return True


def defer_unused() -> None:
    for name in UNUSED:
        defer(name)
