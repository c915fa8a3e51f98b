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

    install_reactor()  # the asyncio reactor, as `thinserve serve`, before anything imports one
    from thinserve.cli import run_server
    from thinserve.config import load

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_server(dataclasses.replace(load(path), web_listen=(), discovery=False))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
