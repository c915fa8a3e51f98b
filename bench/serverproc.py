"""thinserve as its own process for the benchmark: ``python -m bench.serverproc CONFIG``.

The configuration file is read by thinserve's own loader (the same TOML
``thinserve serve --config`` reads); the browser terminal and discovery are
turned off, so only the RFB listener runs.  The process runs ThinServe on
the asyncio reactor, as ``thinserve serve`` does, until it gets SIGTERM.
"""

from __future__ import annotations

import dataclasses
import logging
import sys


def main(path: str) -> int:
    from thinserve.cli import install_reactor

    install_reactor()
    from twisted.internet import reactor

    from thinserve.config import load
    from thinserve.service import ThinServe

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = dataclasses.replace(load(path), web_listen=(), discovery=False)
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
    sys.exit(main(sys.argv[1]))
