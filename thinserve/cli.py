"""The ``thinserve`` command: ``thinserve serve`` runs the server; the admin
commands (``thinserve terminals``, ``pair``, ``users`` ...) talk to it
(thinserve.admin.commands, docs/admin.md)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from typing import TYPE_CHECKING

from .admin import commands

if TYPE_CHECKING:
    from .config import Config


def install_reactor() -> None:
    """Twisted on the asyncio event loop, before anything imports a reactor."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve":
        return serve(args)
    if getattr(args, "admin", None) is not None:
        return commands.run(args)
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thinserve", description="Thin-client terminal server")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the server")
    serve_p.add_argument("--config", help="TOML configuration file (default: embedded defaults)")
    serve_p.add_argument(
        "--listen",
        action="append",
        help="where terminals connect, as a Twisted endpoint (e.g. tcp:5900); repeatable",
    )
    commands.add_commands(sub)
    return parser


def serve(args: argparse.Namespace) -> int:
    install_reactor()
    from dataclasses import replace

    from .config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return 2
    if args.listen:
        config = replace(config, listen=tuple(args.listen))
    logging.getLogger("thinserve").info("configuration: %s", config.source)
    return run_server(config)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024


def return_large_buffers() -> None:
    """Make glibc give large buffers (frames, drawn screens) back to the system
    when they are freed.  Its threshold for that otherwise rises to 32 MiB
    after the first large buffer is freed, and a server that draws many
    screens keeps hundreds of MiB it no longer uses.  Elsewhere: nothing."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


def run_server(config: Config) -> int:
    """Run thinserve on ``config`` until the reactor stops; the exit status."""
    return_large_buffers()
    install_reactor()
    from twisted.internet import reactor

    from .service import ThinServe

    server = ThinServe(config, reactor)
    failures: list[str] = []

    def start() -> None:
        d = server.startService()
        d.addErrback(lambda f: (failures.append(f.getErrorMessage()), reactor.stop()))

    reactor.callWhenRunning(start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    if failures:
        print(f"thinserve: could not start: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
