"""Placeholders for modules websockets imports and the relay never uses: nothing loaded until used, then the real thing."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run(code: str) -> str:
    """``code`` in a fresh interpreter (what is imported is process-wide state)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_programs_do_not_load_what_websockets_imports_for_nothing() -> None:
    out = run("""
        import sys
        from reverse_websockify.deferred_imports import UNUSED, defer_unused
        defer_unused()
        import reverse_websockify.server, reverse_websockify.agent, websockets.version
        print(sorted(type(sys.modules[name]).__name__ for name in UNUSED))
        print("email.message" in sys.modules, "http.client" in sys.modules)
    """)
    assert out.splitlines() == ["['_Deferred', '_Deferred']", "False False"]


def test_the_first_use_loads_the_real_module_for_every_holder() -> None:
    out = run("""
        import os, sys
        from reverse_websockify.deferred_imports import defer_unused
        defer_unused()
        import importlib.metadata as early  # a placeholder, kept by whoever imported it
        from websockets.proxy import get_proxy
        from websockets.uri import parse_uri
        os.environ["HTTPS_PROXY"] = "http://127.0.0.1:3128"
        print(get_proxy(parse_uri("wss://rendezvous.example/forward_to_me/BUS1")))  # urllib.request, at first use
        print(early.version("websockets") == __import__("websockets").__version__)
        import importlib.metadata, urllib.request
        print(type(sys.modules["importlib.metadata"]).__name__, type(sys.modules["urllib.request"]).__name__)
        import inspect
        print(inspect.getmodule(get_proxy).__name__)  # walks sys.modules: placeholders answer dunders without loading
    """)
    assert out.splitlines() == ["http://127.0.0.1:3128", "True", "module module", "websockets.proxy"]
