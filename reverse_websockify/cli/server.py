"""reverse_websockify_server [CONFIG]: the rendezvous server."""

from __future__ import annotations

import sys
from pathlib import Path

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
    if args.check_config:
        from ..revocation import RevocationListError, load_revocation_list

        try:
            revoked = load_revocation_list(config.client_crl, f"{path}: client_crl")
        except RevocationListError as exc:
            fail(str(exc))
        crl = f", client_crl with {len(revoked)} revoked certificates" if config.client_crl else ""
        print(f"{path}: OK, {len(config.services)} services{crl}")
        return
    configure_logging(args.log_level, args.log_format)
    from ..revocation import RevocationListError
    from ..server import RendezvousServer, StartupError
    from ..tls import TlsSetupError

    async def serve() -> None:
        await RendezvousServer(config, started_as=f"{version_text(PROGRAM)} on {loop_name()}").serve_forever()

    try:
        run_event_loop(serve, args.event_loop)
    except (StartupError, TlsSetupError, RevocationListError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
