"""reverse_websockify_server [CONFIG]: the rendezvous server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Coroutine

from ..deferred_imports import defer_unused
from .common import (
    OneLineParser,
    add_event_loop_flag,
    add_logging_flags,
    configure_logging,
    fail,
    loop_name,
    run_event_loop,
    version_text,
)

PROGRAM = "reverse_websockify_server"


def config_candidates() -> list[Path]:
    """Where to look when no CONFIG is given: next to the executable, then the platform's config dirs."""
    places = []
    if getattr(sys, "frozen", False):
        places.append(Path(sys.executable).resolve().parent / "config.toml")
    places.append(Path.cwd() / "config.toml")
    try:
        import platformdirs

        places.append(Path(platformdirs.user_config_dir("reverse_websockify")) / "config.toml")
        places.append(Path(platformdirs.site_config_dir("reverse_websockify")) / "config.toml")
    except ImportError:  # pragma: no cover
        pass
    unique: list[Path] = []
    for p in places:
        if p not in unique:
            unique.append(p)
    return unique


def main(argv: list[str] | None = None) -> None:
    defer_unused()  # before anything imports websockets
    parser = OneLineParser(
        prog=PROGRAM,
        description="Rendezvous server: agents attach at /forward_to_me/<ID> over WebSocket; "
        "users connect to each service's local_listen_endpoint.",
        allow_abbrev=False,
    )
    parser.add_argument("config", nargs="?", help="config.toml (default: see --help of the README)")
    parser.add_argument("--check-config", action="store_true", help="validate the config and exit")
    parser.add_argument("--example-config", action="store_true", help="print an example config.toml and exit")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sharding = parser.add_argument_group("sharding: a config with [shards] (see the README)")
    sharding.add_argument("--shard", type=int, metavar="K",
                          help="run only shard K: its own HTTP endpoint and the listeners of the services it owns")
    sharding.add_argument("--all-shards", action="store_true",
                          help="run every shard as a child process, supervised, with the merged status on "
                          "http_server_endpoint (the default for a config with [shards])")
    sharding.add_argument("--shards-status", action="store_true",
                          help="serve only the merged status of the shards on http_server_endpoint "
                          "(when they run as systemd units or on other hosts)")
    sharding.add_argument("--nginx-shard-map", action="store_true",
                          help="print nginx's upstreams and map from /forward_to_me/<ID> to its shard, and exit")
    add_event_loop_flag(parser)
    add_logging_flags(parser)
    args = parser.parse_args(argv)
    if args.version:
        print(version_text(PROGRAM))
        return
    from ..config import EXAMPLE_CONFIG, ConfigError, load

    if args.example_config:
        sys.stdout.write(EXAMPLE_CONFIG)
        return
    if args.config:
        path = Path(args.config)
    else:
        candidates = config_candidates()
        found = [p for p in candidates if p.is_file()]
        if not found:
            fail("no config file given and none found; looked in: " + ", ".join(map(str, candidates))
                 + f" (write one with: {PROGRAM} --example-config > config.toml)")
        path = found[0]
    try:
        config = load(path)
    except ConfigError as exc:
        fail(str(exc))
    if sum(map(bool, (args.shard is not None, args.all_shards, args.shards_status, args.nginx_shard_map))) > 1:
        fail("--shard, --all-shards, --shards-status and --nginx-shard-map exclude each other")
    if args.nginx_shard_map:
        from ..nginxmap import render

        try:
            sys.stdout.write(render(config, str(path)))
        except ConfigError as exc:
            fail(f"{path}: {exc}")
        return
    whole = config
    if (args.all_shards or args.shards_status) and config.shards is None:
        fail(f"{path}: --{'all-shards' if args.all_shards else 'shards-status'}: the config has no [shards] table")
    run_shards = config.shards is not None and args.shard is None and not args.shards_status
    if args.shard is not None:
        try:
            config = config.for_shard(args.shard)
        except ConfigError as exc:
            fail(f"{path}: {exc}")
    if args.check_config:
        from ..revocation import RevocationListError, load_revocation_list

        try:
            revoked = load_revocation_list(config.client_crl, f"{path}: client_crl")
        except RevocationListError as exc:
            fail(str(exc))
        crl = f", client_crl with {len(revoked)} revoked certificates" if config.client_crl else ""
        shards = ""
        if whole.shards is not None:
            counts = [sum(1 for o in whole.shards.owners.values() if o == k) for k in range(len(whole.shards))]
            shards = f", {len(counts)} shards (" + ", ".join(f"{k}: {n}" for k, n in enumerate(counts)) + ")"
        print(f"{path}: OK, {len(config.services)} services{crl}{shards}")
        return
    configure_logging(args.log_level, args.log_format, shard=config.shard)
    from ..revocation import RevocationListError
    from ..server import RendezvousServer, StartupError
    from ..tls import TlsSetupError

    async def serve_one() -> None:
        shard = f", shard {config.shard} of {len(config.shards)}" if config.shards is not None else ""
        await RendezvousServer(config, started_as=f"{version_text(PROGRAM)} on {loop_name()}{shard}").serve_forever()

    serve = _shards_main(config, path, args, supervise=run_shards) if run_shards or args.shards_status else serve_one
    try:
        run_event_loop(serve, args.event_loop)
    except (StartupError, TlsSetupError, RevocationListError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        pass


def _shards_main(config: Any, path: Path, args: Any, *, supervise: bool) -> Callable[[], Coroutine[Any, Any, None]]:
    """--all-shards (the supervisor and the merged status) or --shards-status (the merged status alone)."""
    from ..merged_status import MergedStatus
    from ..signals import on_stop_signals
    from ..supervisor import Supervisor

    def shard_command(shard: int) -> list[str]:
        frozen = getattr(sys, "frozen", False)  # a single-file executable runs itself
        program = [sys.executable] if frozen else [sys.executable, "-m", "reverse_websockify.cli.server"]
        return program + [str(path.resolve()), "--shard", str(shard), f"--log-level={args.log_level}",
                          f"--log-format={args.log_format}", f"--event-loop={args.event_loop}"]

    if getattr(sys, "frozen", False):  # each shard unpacks its own copy: it may outlive this one's
        os.environ["PYINSTALLER_RESET_ENVIRONMENT"] = "1"

    async def serve() -> None:
        status = MergedStatus(config)
        await status.start()
        try:
            if supervise:
                await Supervisor(config, shard_command, on_reload=status.reload).run()
            else:
                stopping = asyncio.Event()
                loop = asyncio.get_running_loop()
                on_stop_signals(loop, stopping.set)
                loop.add_signal_handler(signal.SIGHUP, lambda: _reload_status(status, path))
                await stopping.wait()
        finally:
            await status.stop()

    return serve


def _reload_status(status: Any, path: Path) -> None:
    from ..config import ConfigError, load

    try:
        status.reload(load(path))
    except ConfigError as exc:
        logging.getLogger("reverse_websockify.shards").error("SIGHUP: %s; keeping the running config", exc)


if __name__ == "__main__":
    main()
