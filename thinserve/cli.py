"""The ``thinserve`` command: ``thinserve serve`` runs the server; the admin
commands (``thinserve terminals``, ``pair``, ``users`` ...) talk to it
(thinserve.admin.commands, docs/admin.md)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .admin import commands

if TYPE_CHECKING:
    from twisted.python.failure import Failure

    from .config import Config


def install_reactor() -> None:
    """Twisted on the asyncio event loop, before anything imports a reactor."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install()  # Twisted leaves it unannotated


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


class Reactor(Protocol):
    """What run_server asks of the reactor: IReactorCore, as mypy can read it."""

    def callWhenRunning(self, _callable: Callable[[], object], /) -> object: ...
    def addSystemEventTrigger(
        self, _phase: str, _event: str, _callable: Callable[[], object], /
    ) -> object: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...


def run_server(config: Config) -> int:
    """Run thinserve on ``config`` until the reactor stops; the exit status."""
    return_large_buffers()
    install_reactor()
    from twisted.internet import reactor

    from .service import ThinServe

    server = ThinServe(config, reactor)
    loop: Reactor = reactor
    failures: list[str] = []

    def failed(failure: Failure) -> None:
        failures.append(failure.getErrorMessage())
        loop.stop()

    loop.callWhenRunning(lambda: server.startService().addErrback(failed))
    loop.addSystemEventTrigger("before", "shutdown", server.stopService)
    loop.run()
    if failures:
        print(f"thinserve: could not start: {failures[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
