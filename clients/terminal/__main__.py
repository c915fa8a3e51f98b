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

from .options import Options, parse_args

PYGAME_HINT = (
    "thinserve-terminal needs pygame-ce (SDL2): pip install pygame-ce "
    "(in a thinserve checkout: make venv)"
)


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    setup_logging(options.verbose)
    try:
        terminal_id = resolve_id(options)
    except (OSError, ValueError) as exc:
        print(f"thinserve-terminal: cannot get a terminal id: {exc}", file=sys.stderr)
        return 1
    if options.show_id:
        print(terminal_id)
        return 0
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

    return run(options, terminal_id)


def resolve_id(options: Options) -> str:
    from .identity import default_id_path, load_or_create_id

    if options.terminal_id is not None:
        return options.terminal_id
    return load_or_create_id(options.id_file or default_id_path())


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
