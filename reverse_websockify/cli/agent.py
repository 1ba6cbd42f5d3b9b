"""reverse_websockify_agent_service_side: the agent next to the TCP service, dialling out."""

from __future__ import annotations

import argparse
import logging
import os

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

PROGRAM = "reverse_websockify_agent_service_side"
TOKEN_ENV = "REVERSE_WEBSOCKIFY_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROGRAM,
        description="Keep a WebSocket open to the rendezvous server and relay every user "
        "connection it forwards to --service. Reconnects forever.",
        allow_abbrev=False,
    )

    def flag(name: str, **kwargs: object) -> None:
        # The Go original's flag package also takes -name; accept both spellings.
        parser.add_argument(f"--{name}", f"-{name}", **kwargs)  # type: ignore[arg-type]

    flag("service", metavar="HOST:PORT", help="the local TCP service, e.g. 127.0.0.1:36000 (required)")
    flag("reverse-websockify", metavar="URL", dest="url",
         help="server URL, e.g. wss://my.rendezvous.com/forward_to_me/<ID> (required)")
    flag("client-cert", metavar="PEM", help="client certificate for wss:// (nginx ssl_verify_client)")
    flag("client-key", metavar="PEM", help="key of --client-cert")
    flag("ca-cert", metavar="PEM", help="CA (or self-signed server certificate) that signs the server's "
         "certificate; default: the system's trusted CAs")
    flag("tls-server-name", metavar="NAME", help="name or IP the server certificate must carry, when it "
         "differs from the URL's host")
    flag("insecure", action="store_true", help="do NOT verify the server certificate (logged as a WARNING)")
    flag("token", help=f"shared secret the server requires for this ID (prefer --token-file or ${TOKEN_ENV}: "
         "command lines are visible to other users)")
    flag("token-file", metavar="PATH", help="read the token from this file")
    flag("dial-timeout", type=float, default=10.0, metavar="SECONDS", help="connect timeout to --service (10)")
    flag("ping-interval", type=float, default=8.0, metavar="SECONDS", help="WebSocket ping every (8)")
    flag("ping-timeout", type=float, default=10.0, metavar="SECONDS",
         help="declare the link dead without a pong within (10)")
    flag("max-backoff", type=float, default=30.0, metavar="SECONDS", help="longest wait between reconnects (30)")
    flag("receive-budget-mib", type=float, default=16.0, metavar="MIB",
         help="bytes all streams together may have in flight toward this agent; windows grow to the link within "
              "it (16)")
    flag("version", action="store_true", help="print the version and exit")
    add_event_loop_flag(parser)
    add_logging_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    defer_unused()  # before anything imports websockets
    args = build_parser().parse_args(argv)
    if args.version:
        print(version_text(PROGRAM))
        return
    from ..config import ConfigError, agent_config

    try:
        config = agent_config(
            service=args.service, url=args.url, ca_cert=args.ca_cert, client_cert=args.client_cert,
            client_key=args.client_key, tls_server_name=args.tls_server_name, insecure=args.insecure,
            token=args.token, token_file=args.token_file, token_env=os.environ.get(TOKEN_ENV),
            dial_timeout=args.dial_timeout, ping_interval=args.ping_interval, ping_timeout=args.ping_timeout,
            max_backoff=args.max_backoff, receive_budget_mib=args.receive_budget_mib,
        )
    except ConfigError as exc:
        fail(str(exc))
    tls = None
    if config.tls is not None:
        from ..tls import TlsSetupError, agent_tls

        try:
            tls = agent_tls(config.tls, config.host)
        except TlsSetupError as exc:
            fail(str(exc))
    configure_logging(args.log_level, args.log_format, service=config.service_id)

    from ..agent import Agent

    async def serve() -> None:
        logging.getLogger("reverse_websockify.agent").info("%s starting on %s", version_text(PROGRAM), loop_name())
        await Agent(config, tls).serve_forever()

    try:
        run_event_loop(serve, args.event_loop)
    except KeyboardInterrupt:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
