"""Entry point: ``thinserve-terminal`` / ``python -m clients.terminal``.

The asyncio reactor is installed here, before anything imports Twisted's
reactor, so python-zeroconf and Twisted share one asyncio loop; headless
mode sets SDL's dummy video driver before pygame starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TYPE_CHECKING

from .options import Options, parse_args

if TYPE_CHECKING:
    from .identity import TerminalKey

PYGAME_HINT = (
    "thinserve-terminal needs pygame-ce (SDL2): pip install pygame-ce "
    "(in a thinserve checkout: make venv)"
)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    setup_logging(options.verbose)
    try:
        key = resolve_key(options)
    except (OSError, ValueError) as exc:
        print(f"thinserve-terminal: cannot get the terminal's key: {exc}", file=sys.stderr)
        return 1
    if options.show_id:
        print(key.terminal_id)
        return 0
    if options.ca_file is not None:
        from thinserve.tls import load_ca_file

        try:
            load_ca_file(options.ca_file)
        except (OSError, ValueError) as exc:
            print(f"thinserve-terminal: --ca: {exc}", file=sys.stderr)
            return 1
    if options.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import pygame  # noqa: F401
    except ImportError:
        print(PYGAME_HINT, file=sys.stderr)
        return 2
    install_reactor()
    from .app import run

    return run(options, key)


def resolve_key(options: Options) -> TerminalKey:
    """The terminal's key: --key-file, --id's named key, or the default one."""
    from .identity import TerminalKey, default_key_path, named_key_path

    if options.key_file is not None:
        return TerminalKey.load_or_create(options.key_file)
    if options.id_name is not None:
        return TerminalKey.load_or_create(named_key_path(options.id_name), options.id_name)
    return TerminalKey.load_or_create(default_key_path())


def install_reactor() -> None:
    """Twisted on asyncio, so zeroconf runs in the same loop."""
    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("zeroconf").setLevel(logging.WARNING)
    from twisted.python import log as twisted_log

    twisted_log.PythonLoggingObserver().start()


if __name__ == "__main__":
    sys.exit(main())
