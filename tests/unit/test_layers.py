"""The import drawing of the package: layers, one way down, no cycles (docs/architecture.md).

Every module has a rank; a module may import only modules of a lower rank
(imports inside functions and under TYPE_CHECKING included). A new module
must be given its place here, which is the point: where it sits is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reverse_websockify

PACKAGE = Path(reverse_websockify.__file__).parent

RANKS: dict[str, int] = {
    # leaves: no imports from the package (or only from other leaves below them)
    "__init__": 0,
    "protocol": 1,  # the wire codec and its constants
    "reasons": 1,
    "logfields": 1,
    "latency": 1,
    "errors": 1,
    "allocator": 1,
    "fdlimit": 2,  # its listing runs in a worker thread (pacing)
    "signals": 1,
    "pacing": 1,
    "gcpolicy": 1,
    "looplag": 2,
    "deferred_imports": 1,  # placeholders for modules websockets imports and never uses  # the event loop's lag: a histogram (latency) and its timer
    "status": 1,
    "stats": 2,
    "sharding": 1,  # which shard owns a service ID: the pure rule
    "config": 2,
    "tls": 3,
    "wsframes": 1,  # our binary WebSocket framing (pure)
    "wsconnection": 2,  # websockets' internals
    # who may attach: pure rules on certificates, tokens and the CRL
    "identity": 1,
    "revocation": 2,
    "authentication": 3,
    # the pure session layer
    "flow": 2,
    "stream_state": 3,
    "session": 4,
    # the asyncio layer: sockets, timers, dialling
    "streams": 5,
    "liveness": 3,  # one keepalive timer for the fleet (websockets' internals via wsconnection)
    "user_side": 6,
    "service_side": 6,
    "tunnel": 7,
    # the programs
    "service": 8,
    "admission": 9,
    "metrics": 9,
    "reports": 10,  # status and metrics read in slices, formatted off the loop
    "server": 11,
    # [shards]: the nginx map (pure), the merged status page, the --all-shards supervisor
    "nginxmap": 3,
    "merged_status": 12,
    "supervisor": 12,
    "agent": 10,
    "cli.common": 12,
    "cli.server": 13,
    "cli.agent": 13,
    "cli.__init__": 13,
    "__main__": 14,
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_imports(name: str, source: str) -> set[str]:
    """Modules of the package that module ``name`` imports, anywhere in its ``source``."""
    here = name.split(".")[:-1]  # the package the module is in, relative to reverse_websockify
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("reverse_websockify"):
                    base = node.module.split(".")[1:]
                else:
                    continue
            else:
                base = (here[: len(here) - (node.level - 1)] if node.level > 1 else here) + (
                    node.module.split(".") if node.module else [])
            for alias in node.names:
                candidate = ".".join([*base, alias.name])
                found.add(candidate if candidate in RANKS else ".".join(base) or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("reverse_websockify."):
                    found.add(alias.name.split(".", 1)[1])
    return {m for m in found if m != name}


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_place() -> None:
    missing = [module_name(p) for p in all_modules() if module_name(p) not in RANKS]
    assert not missing, f"give these modules a rank in tests/unit/test_layers.py: {missing}"
    gone = set(RANKS) - {module_name(p) for p in all_modules()}
    assert not gone, f"ranked modules that no longer exist: {gone}"


def upward_imports(name: str, source: str) -> list[str]:
    upward = []
    for imported in package_imports(name, source):
        assert imported in RANKS, f"{name} imports {imported}, which is not a module of the package"
        if RANKS[imported] >= RANKS[name]:
            upward.append(f"{name} ({RANKS[name]}) imports {imported} ({RANKS[imported]})")
    return upward


def test_imports_only_go_down() -> None:
    upward = [line for path in all_modules() for line in upward_imports(module_name(path), path.read_text())]
    assert not upward, "imports that do not go down a layer:\n" + "\n".join(upward)


def test_pure_layers_import_no_io() -> None:
    """The session layer is pure: no asyncio, sockets, logging or websockets."""
    for name in ("protocol", "flow", "stream_state", "session"):
        tree = ast.parse((PACKAGE / f"{name}.py").read_text())
        modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                   for alias in node.names}
        modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        assert not modules & {"asyncio", "socket", "logging", "websockets", "ssl", "time"}, (name, modules)


@pytest.mark.parametrize("line", ["from .tunnel import Tunnel", "    from ..server import Service",
                                  "from reverse_websockify import agent", "import reverse_websockify.cli.agent"])
def test_an_upward_import_is_seen(line: str) -> None:
    source = (PACKAGE / "session.py").read_text() + "\ndef f():\n" + ("    " + line.strip()) + "\n"
    assert upward_imports("session", source)
