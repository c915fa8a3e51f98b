"""The TLS benchmark: what encrypting the terminal link costs, None next to X509None.

One Xvnc desktop per screen size and one thinserve process (bench/tlsserver.py)
offering loopback terminals None and VeNCrypt X509None.  The same measuring
terminal (thinserve's own client) reaches it both ways, the paths alternating
(None, X509None, None, ...) so that drift of the machine hits both:

* connection set-up: from the TCP connect to ServerInit and to the first
  framebuffer update decoded, on fresh connections, the typing workload's
  first frame on the screen;
* the typing and video workloads (bench/workloads.py) replayed as the relay
  suite does (bench/relay.py ``measure``): typed-character latency, and the
  time of a full-screen frame from the desktop to the terminal.

Call only with the asyncio reactor installed and running.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from twisted.internet.interfaces import ISSLTransport

from .options import TLSOptions
from .painter import Painter
from .relay import Run, measure
from .terminal import TIGHT, MeasuringTerminal, connect
from .tlsserver import PATHS, SOURCE, Keys, Server, can_present_certificate, make_keys
from .tlsserver import client_options as security
from .workloads import WORKLOADS, channel_difference
from .xvnc import Xvnc

Progress = Callable[[str], None]


@dataclass
class Setup:
    """Fresh connections on one path: seconds from the TCP connect to each milestone."""

    path: str
    to_init: list[float] = field(default_factory=list)  # ServerInit received
    to_frame: list[float] = field(default_factory=list)  # first update decoded
    off_desktop: int = 0  # first updates that did not show the desktop's frame


@dataclass
class SizeResult:
    size: tuple[int, int]
    setups: dict[str, Setup]
    runs: list[Run]  # workload runs, in the order measured


@dataclass
class TLSResult:
    link: str  # the TLS link as the terminal saw it
    client_certificate: bool  # whether the terminal presented one
    sizes: list[SizeResult]


def describe_link(terminal: MeasuringTerminal) -> tuple[str, bool]:
    """(protocol and cipher, client certificate presented?) of a TLS terminal."""
    transport = terminal.transport
    if not ISSLTransport.providedBy(transport):
        return "not TLS", False
    handle = transport.getHandle()  # type: ignore[union-attr]
    link = f"{handle.get_protocol_version_name()} {handle.get_cipher_name()}"
    return link, handle.get_certificate() is not None


@dataclass(frozen=True)
class Sample:
    to_init: float
    to_frame: float
    shown: bool  # the first update showed the desktop's frame
    link: tuple[str, bool]


async def connect_once(port: int, path: str, keys: Keys, frame: np.ndarray) -> Sample:
    """One fresh connection, timed from the TCP connect, closed again."""
    started = time.perf_counter()
    terminal = await connect(port, TIGHT, SOURCE, security(path, keys))
    try:
        assert terminal.init_at is not None and terminal.first_update_at is not None
        fb = terminal.conn.framebuffer
        shown = fb.shape == frame.shape and channel_difference(fb[::4], frame[::4]) < 3.0
        return Sample(
            terminal.init_at - started,
            terminal.first_update_at - started,
            shown,
            describe_link(terminal),
        )
    finally:
        terminal.close()
        await terminal.closed


async def measure_setup(
    port: int, keys: Keys, frame: np.ndarray, options: TLSOptions, result: TLSResult
) -> dict[str, Setup]:
    setups = {path: Setup(path) for path in PATHS}
    for _ in range(options.warmup):
        for path in PATHS:
            await connect_once(port, path, keys, frame)
    for _ in range(options.connections):
        for path in PATHS:
            sample = await connect_once(port, path, keys, frame)
            setups[path].to_init.append(sample.to_init)
            setups[path].to_frame.append(sample.to_frame)
            setups[path].off_desktop += not sample.shown
            if path != "None":
                result.link, result.client_certificate = sample.link
    return setups


async def run_size(
    size: tuple[int, int], keys: Keys, options: TLSOptions, result: TLSResult, progress: Progress
) -> SizeResult:
    width, height = size
    tag = f"[tls {width}x{height}]"
    xvnc = Xvnc(width, height, name=f"bench-tls-{width}x{height}")
    progress(f"{tag} starting Xvnc and thinserve")
    xvnc.start()
    server = Server((xvnc.name, xvnc.port), keys, Path(keys.server_cert).parent)
    try:
        server.start()
        painter = Painter(xvnc)
        workloads = {n: WORKLOADS[n](width, height, options.seconds) for n in options.workloads}
        first = workloads.get("typing") or WORKLOADS["typing"](width, height, 1.0)
        painter.show_initial(first)
        progress(f"{tag} connection set-up: {options.connections} connections per path")
        setups = await measure_setup(server.port(""), keys, first.initial, options, result)
        runs = []
        for name, workload in workloads.items():
            for round_ in range(options.rounds):
                for path in PATHS:
                    progress(f"{tag} {name} round {round_ + 1}/{options.rounds} {path}")
                    opts = security(path, keys)
                    runs.append(await measure(server, painter, workload, TIGHT, path, opts))
        painter.close()
    finally:
        server.stop()
        xvnc.stop()
    return SizeResult(size, setups, runs)


async def run(options: TLSOptions, progress: Progress) -> TLSResult:
    if not can_present_certificate():
        progress("rfbclient has no client certificate option yet: X509None without one")
    result = TLSResult("", False, [])
    with tempfile.TemporaryDirectory(prefix="thinserve-bench-tls-") as folder:
        keys = make_keys(Path(folder))
        for size in options.sizes:
            result.sizes.append(await run_size(size, keys, options, result, progress))
    return result
