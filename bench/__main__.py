"""``python -m bench``: thinserve's encodings measured next to TigerVNC's Xvnc.

Prints the machine, then one table per content; progress goes to stderr.
docs/performance.md explains the columns.
"""

from __future__ import annotations

import argparse
import sys
import time

from .content import CONTENTS
from .options import Options
from .xvnc import INSTALL_HINT, xvnc_path, xvnc_version


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Encode/decode speed and bytes per frame of thinserve's RFB "
        "encodings, next to TigerVNC's Xvnc serving the same screen.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1280x720 frames, 3 repetitions, all rows"
    )
    parser.add_argument(
        "--content",
        choices=list(CONTENTS),
        action="append",
        help="measure only this content (repeatable; default: all)",
    )
    parser.add_argument(
        "--no-xvnc", action="store_true", help="leave out Xvnc (for machines without it)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per measurement (median)")
    return parser.parse_args(argv)


def install_reactor() -> None:
    """Twisted on the asyncio event loop, before anything imports a reactor."""
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    asyncioreactor.install()


def peer_description(options: Options) -> str:
    if options.xvnc:
        return xvnc_version()
    if xvnc_path() is None:
        return f"Xvnc not measured: not installed ({INSTALL_HINT}); its columns show '-'"
    return "Xvnc not measured: --no-xvnc was given; its columns show '-'"


async def run_and_print(options: Options) -> int:
    from .report import load, machine_lines, render
    from .runner import run
    from .xvnc import XvncError

    machine = machine_lines(peer_description(options))
    started = time.monotonic()
    try:
        results = await run(options)
    except (XvncError, ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(render(options, machine, results)))
    print(f"\n(run took {time.monotonic() - started:.0f} s; load average at the end {load()})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.no_xvnc and xvnc_path() is None:
        print(f"error: Xvnc is not installed: {INSTALL_HINT} (or pass --no-xvnc)", file=sys.stderr)
        return 2
    options = Options.of(args.quick, tuple(args.content or CONTENTS), not args.no_xvnc, args.repeat)
    install_reactor()
    from twisted.internet import defer, task

    status = [1]

    async def body() -> None:
        status[0] = await run_and_print(options)

    try:
        task.react(lambda _reactor: defer.Deferred.fromCoroutine(body()))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return int(exit_.code) if isinstance(exit_.code, int) else 1
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
