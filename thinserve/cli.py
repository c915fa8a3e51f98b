"""The ``thinserve`` command: ``thinserve serve`` runs the server; the admin
commands (``thinserve terminals``, ``pair``, ``users`` ...) talk to it
(thinserve.admin.commands, docs/admin.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import heap, logs, operations
from .admin import commands
from .cluster import command as cluster_command
from .paths import ADMIN_SOCKET_NAME, SYSTEM_CONFIG, default_runtime_dir

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from .config import Config
    from .notify import Notifier
    from .service import ThinServe

log = logging.getLogger("thinserve")


def install_reactor() -> None:
    """Twisted on the asyncio event loop, before anything imports a reactor."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from . import reactor

    reactor.install()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "serve":
        return serve(args)
    operation = getattr(args, "operation", None)
    if operation is not None:
        return int(operation(args))
    if getattr(args, "admin", None) is not None:
        return commands.run(args)
    parser.print_help()
    return 2


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of ``thinserve`` (the man page is made from it)."""
    parser = argparse.ArgumentParser(prog="thinserve", description="Thin-client terminal server")
    parser.add_argument("--version", action="version", version=f"thinserve {version()}")
    _add_log_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command")
    serve_p = sub.add_parser("serve", help="run the server", description="run the server")
    add_config_options(serve_p)
    serve_p.add_argument(
        "--listen",
        action="append",
        help="where terminals connect, as a Twisted endpoint (e.g. tcp:5900); repeatable",
    )
    serve_p.add_argument(
        "--stop-desktops",
        action="store_true",
        help="stop the desktops thinserve started when it stops (default: leave them "
        "running; the next start finds them again)",
    )
    _add_log_options(serve_p, defaults=False)
    commands.add_commands(sub)
    operations.add_commands(sub)
    cluster_command.add_commands(sub)
    return parser


def _add_log_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--log-level and --log-format, before the command or after ``serve``.

    After the command they default to nothing at all, so that they do not
    undo the same option given before it.
    """
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default="info" if defaults else argparse.SUPPRESS,
        help="the least important messages logged (default: info)",
    )
    parser.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="auto" if defaults else argparse.SUPPRESS,
        help="journal (systemd's journal), text, json (one object a line); auto (the "
        "default): journal under systemd, text on a terminal, else json",
    )


def version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("thinserve")
    except PackageNotFoundError:
        return "unknown (not installed)"


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config, --defaults and --state-dir: which configuration, and where its state lives."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (default: {SYSTEM_CONFIG} when it exists, "
        "else the embedded defaults)",
    )
    which.add_argument(
        "--defaults",
        action="store_true",
        help=f"use the embedded defaults, even when {SYSTEM_CONFIG} exists",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the database, certificate and desktop records in DIR, and the "
        "sockets in DIR/run (default: [server] state_dir, else $STATE_DIRECTORY, else "
        "/var/lib/thinserve as root, else ~/.local/share/thinserve)",
    )


def config_from(args: argparse.Namespace) -> Config:
    """The configuration the options of add_config_options (and serve's) ask for.

    The database comes out as a path (by default in the state directory),
    and so does the admin socket when the runtime directory is not the
    default one.  Raises ConfigError.
    """
    from .config import load

    state_dir = Path(args.state_dir).absolute() if getattr(args, "state_dir", None) else None
    config = load(config_file(args), state_dir)
    if getattr(args, "listen", None):
        config = replace(config, listen=tuple(args.listen))
    if getattr(args, "stop_desktops", False):
        config = replace(config, stop_desktops=True)
    config = replace(config, database=config.database_path)
    if config.admin_socket is None and config.runtime_dir != default_runtime_dir():
        # A runtime directory that was asked for holds the socket, and must work;
        # the default one's problems are only logged (docs/admin.md).
        config = replace(config, admin_socket=str(config.runtime_dir / ADMIN_SOCKET_NAME))
    return config


def config_file(args: argparse.Namespace) -> Path | None:
    """--config, else /etc/thinserve/thinserve.toml when it exists; None: the embedded defaults."""
    if getattr(args, "defaults", False):
        return None
    if getattr(args, "config", None):
        return Path(args.config)
    return SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None


def serve(args: argparse.Namespace) -> int:
    """Read the configuration, take the state lock, then run the server."""
    install_reactor()
    from . import statelock
    from .config import ConfigError

    try:
        config = config_from(args)
    except ConfigError as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return 2
    try:
        lock = statelock.acquire(config.state_dir)
    except (statelock.StateLocked, OSError) as exc:
        print(f"thinserve: {exc}", file=sys.stderr)
        return 1
    with lock:
        log.info("configuration: %s; state in %s", config.source, config.state_dir)
        return run_server(config, lambda: config_from(args))


class Reactor(Protocol):
    """What run_server asks of the reactor: IReactorCore, as mypy can read it."""

    def callWhenRunning(self, _callable: Callable[[], object], /) -> object: ...
    def callFromThread(self, _callable: Callable[[], object], /) -> None: ...
    def addSystemEventTrigger(
        self, _phase: str, _event: str, _callable: Callable[[], object], /
    ) -> object: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...


def run_server(config: Config, reread: Callable[[], Config] | None = None) -> int:
    """Run thinserve on ``config`` until the reactor stops; the exit status.

    ``reread`` reads the configuration again, as at the start, for SIGHUP;
    without it SIGHUP is logged and ignored.
    """
    heap.tune_malloc()
    install_reactor()
    from twisted.internet import reactor

    from .notify import Notifier
    from .service import ThinServe

    server = ThinServe(config, reactor)
    loop: Reactor = reactor
    life = Lifecycle(server, Notifier.from_environment(), reread)
    failures: list[str] = []

    def failed(failure: Failure) -> None:
        failures.append(failure.getErrorMessage())
        life.start_failed(failures[0])
        loop.stop()

    signal.signal(signal.SIGHUP, lambda _sig, _frame: loop.callFromThread(life.reload))
    loop.callWhenRunning(lambda: server.startService().addCallbacks(life.started, failed))
    loop.addSystemEventTrigger("before", "shutdown", life.stopping)
    loop.addSystemEventTrigger("before", "shutdown", server.stopService)
    loop.run()
    if failures:
        print(f"thinserve: could not start: {failures[0]}", file=sys.stderr)
        return 1
    return 0


class Lifecycle:
    """The running server's start, reloads and stop, told to systemd (thinserve.notify)."""

    def __init__(
        self, server: ThinServe, notifier: Notifier, reread: Callable[[], Config] | None
    ) -> None:
        self.server = server
        self.notifier = notifier
        self.reread = reread
        self.running = False
        self.reloading = False
        self.again = False  # a SIGHUP came during a reload: reload once more after it
        self.failure = ""

    def started(self, _: object = None) -> None:
        self.running = True
        heap.settle()
        status = self.status()
        log.info("thinserve is ready: %s", status)
        self.notifier.ready(status)

    def start_failed(self, why: str) -> None:
        self.failure = why

    def stopping(self) -> None:
        self.running = False
        log.info("thinserve is stopping")
        self.notifier.stopping(f"could not start: {self.failure}" if self.failure else "stopping")

    def status(self) -> str:
        """What systemctl status shows: where terminals, browsers and the
        dashboard connect."""
        parts = []
        for listeners in self.server.listeners:
            ports = [_address(port.getHost()) for port in listeners.ports()]
            if ports:
                parts.append(f"{listeners.kind} on {', '.join(ports)}")
        return "; ".join(parts) or "running"

    def reload(self) -> None:
        """SIGHUP: read the configuration again and apply it; a bad one changes nothing."""
        if not self.running:
            log.warning("SIGHUP ignored: thinserve is not running yet")
            return
        if self.reloading:
            self.again = True
            return
        if self.reread is None:
            log.warning("SIGHUP ignored: this server has no configuration to read again")
            return
        self.reloading = True
        self.notifier.reloading()
        self._apply().addBoth(self._reloaded)

    def _apply(self) -> Deferred[None]:
        from twisted.internet import defer

        from .config import ConfigError

        assert self.reread is not None
        try:
            config = self.reread()
        except ConfigError as exc:
            log.error("reload: %s; nothing changed, the configuration in use stays", exc)
            return defer.succeed(None)
        except Exception:
            return defer.fail()
        reload = getattr(self.server, "reload", None)
        if reload is None:
            log.warning("reload: this version of thinserve cannot reload; restart it to apply")
            return defer.succeed(None)
        log.info("reload: applying %s", config.source)
        changes: Deferred[list[str]] = defer.maybeDeferred(reload, config)
        return changes.addCallback(self._report)

    @staticmethod
    def _report(changes: list[str]) -> None:
        """The server logs each change; this says the reload is over."""
        log.info("reload done: %d change(s)", len(changes))

    def _reloaded(self, result: object) -> None:
        from twisted.python.failure import Failure

        if isinstance(result, Failure):
            log.error("reload failed: %s", result.getErrorMessage(), exc_info=result.value)
        self.reloading = False
        self.notifier.ready(self.status())
        if self.again and self.running:
            self.again = False
            self.reload()


def _address(host: object) -> str:
    name = str(getattr(host, "host", "?"))
    return f"{f'[{name}]' if ':' in name else name}:{getattr(host, 'port', '?')}"


if __name__ == "__main__":
    sys.exit(main())
