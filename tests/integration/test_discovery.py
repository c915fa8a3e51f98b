"""Terminal discovery and reverse connections, over real sockets.

Everything runs on loopback: zeroconf between this process and a publisher
child on 127.0.0.1, and Avahi inside a network namespace the test creates.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from twisted.internet import error, protocol, reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater

from protocols.rfb.client import ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding, SecurityType
from protocols.terminal import SERVICE_TYPE, TerminalAdvert
from tests.support.adverts import ZeroconfPublisher
from tests.support.avahi import AVAHI_PACKAGES, PrivateAvahi, avahi_problem, resolved_services
from tests.support.children import Child, run
from tests.support.need import need
from tests.support.netns import Lan, NetNamespace, lan_problem
from tests.support.waiting import wait_until
from thinserve.config import Config, DesktopConfig
from thinserve.discovery import (
    ServerAdvertiser,
    TerminalBrowser,
    advertised_addresses,
    local_addresses,
)
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.reverse import ReverseConnector, connect_to_terminal, retry_delays
from thinserve.rfbclient import ClientOptions, RFBClientProtocol
from thinserve.rfbserver import RFBServerFactory, RFBServerProtocol, ServerOptions
from thinserve.service import ThinServe

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
DESKTOP_NAME = "fixed picture"


def fixed_frame() -> np.ndarray:
    ys, xs = np.mgrid[0:48, 0:64].astype(np.uint32)
    return (xs * 4) << 16 | (ys * 5) << 8 | ((xs ^ ys) & 0xFF)


def rfb_server_factory() -> RFBServerFactory:
    """thinserve's RFB server showing one fixed framebuffer to every terminal."""
    return RFBServerFactory(
        ServerOptions(),
        lambda: TerminalSession(on_attach=lambda s: Source(fixed_frame(), DESKTOP_NAME)),
    )


class ListeningViewer:
    """A terminal's listening viewer: accepts TCP, then speaks RFB as the client."""

    def __init__(self) -> None:
        self.inits: list[ServerInitReceived] = []
        self.frames: list[np.ndarray] = []
        self.protocols: list[RFBClientProtocol] = []
        self.port: IListeningPort | None = None

    def listen(self, port: int = 0) -> int:
        factory = protocol.Factory.forProtocol(lambda: self._new_protocol())
        self.port = reactor.listenTCP(port, factory, interface=LOOPBACK)  # type: ignore[attr-defined]
        return self.port.getHost().port  # type: ignore[no-any-return, attr-defined]

    def _new_protocol(self) -> RFBClientProtocol:
        proto = RFBClientProtocol(ClientOptions(methods=(SecurityType.NONE,)), self._event)
        self.protocols.append(proto)
        return proto

    def _event(self, proto: RFBClientProtocol, event: object) -> None:
        if isinstance(event, ServerInitReceived):
            self.inits.append(event)
            proto.conn.set_encodings([Encoding.RAW])
            proto.conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            self.frames.append(proto.conn.framebuffer.copy())

    async def close(self) -> None:
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.loseConnection()
        if self.port is not None:
            await self.port.stopListening()


def assert_saw_the_fixed_desktop(viewer: ListeningViewer, sessions: int = 1) -> None:
    assert len(viewer.inits) >= sessions
    for init in viewer.inits:
        assert (init.width, init.height, init.name) == (64, 48, DESKTOP_NAME)
    assert np.array_equal(viewer.frames[-1], fixed_frame())


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def advert_for(port: int, instance: str = "Test terminal") -> TerminalAdvert:
    return TerminalAdvert(instance, "test-terminal", "Test", 64, 48, port, (LOOPBACK,))


# -- one reverse connection ---------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_connect_to_terminal_runs_the_rfb_server_over_an_outgoing_connection() -> None:
    viewer = ListeningViewer()
    port = viewer.listen()
    try:
        proto = await connect_to_terminal(reactor, LOOPBACK, port, rfb_server_factory())
        assert isinstance(proto, RFBServerProtocol)
        await wait_until(lambda: bool(viewer.frames), 5, "the first framebuffer update")
        assert_saw_the_fixed_desktop(viewer)
    finally:
        await viewer.close()


@pytest_twisted.ensureDeferred
async def test_connect_to_terminal_times_out_when_nothing_answers() -> None:
    # A listening socket that never accepts, with its queue full: SYNs are dropped.
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(0)
    fillers = [socket.socket() for _ in range(4)]
    try:
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(silent.getsockname())
        await deferLater(reactor, 0.1)
        started = time.monotonic()
        with pytest.raises(error.TimeoutError):
            await connect_to_terminal(
                reactor, LOOPBACK, silent.getsockname()[1], rfb_server_factory(), timeout=0.5
            )
        assert 0.4 < time.monotonic() - started < 3
    finally:
        for s in [*fillers, silent]:
            s.close()


@pytest_twisted.ensureDeferred
async def test_connect_to_terminal_reports_a_refused_connection() -> None:
    with pytest.raises(error.ConnectionRefusedError):
        await connect_to_terminal(reactor, LOOPBACK, free_port(), rfb_server_factory())


# -- the connector ---------------------------------------------------------------------------------
def test_retry_delays_double_up_to_their_maximum() -> None:
    delays = retry_delays(0.5, 3.0, jitter=0.0)
    assert [delays(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    jittery = retry_delays(1.0, 1.0, jitter=0.1)
    assert all(0.9 <= jittery(n) <= 1.1 for n in range(1, 50))


@pytest_twisted.ensureDeferred
async def test_connector_retries_until_the_terminal_listens_and_stops_when_it_goes() -> None:
    port = free_port()
    advert = advert_for(port)
    connected: list[TerminalAdvert] = []
    disconnected: list[TerminalAdvert] = []
    connector = ReverseConnector(
        reactor,
        lambda _advert: rfb_server_factory(),
        connect_timeout=2,
        initial_delay=0.05,
        max_delay=0.2,
        stable_after=60,
        on_connected=connected.append,
        on_disconnected=disconnected.append,
    )
    connector.startService()
    viewer = ListeningViewer()
    try:
        connector.terminal_added(advert)
        link = connector.links[advert.service_name.lower()]
        await wait_until(lambda: link.attempts >= 3, 5, "three refused attempts")
        assert not connected

        viewer.listen(port)
        await wait_until(lambda: bool(viewer.frames), 5, "a connection once the viewer listens")
        assert_saw_the_fixed_desktop(viewer)
        assert connected == [advert]

        # The terminal ends the session; it is still advertised, so thinserve dials again.
        viewer.protocols[0].transport.loseConnection()
        await wait_until(lambda: len(viewer.frames) >= 2, 5, "a second connection")
        assert_saw_the_fixed_desktop(viewer, sessions=2)
        assert disconnected == [advert] and len(connected) == 2

        # Withdrawn: the live connection stays, but once it ends nobody dials again.
        connector.terminal_removed(advert)
        viewer.protocols[1].transport.loseConnection()
        await wait_until(lambda: len(disconnected) == 2, 5, "the second disconnection")
        attempts = link.attempts
        await deferLater(reactor, 0.6)
        assert link.attempts == attempts
        assert len(viewer.protocols) == 2
        assert connector.links == {}
    finally:
        connector.stopService()
        await viewer.close()


@pytest_twisted.ensureDeferred
async def test_connector_follows_an_advert_to_its_new_port_at_once() -> None:
    connector = ReverseConnector(
        reactor, lambda _advert: rfb_server_factory(), initial_delay=30, max_delay=30
    )
    connector.startService()
    viewer = ListeningViewer()
    try:
        old = advert_for(free_port())
        connector.terminal_added(old)
        first = connector.links[old.service_name.lower()]
        await wait_until(lambda: first.attempts == 1 and first.retries == 1, 5, "a refusal")

        new = advert_for(viewer.listen())
        started = time.monotonic()
        connector.terminal_updated(new)  # no 30 s wait: a new address is tried now
        await wait_until(lambda: bool(viewer.frames), 5, "a connection to the new port")
        assert time.monotonic() - started < 5
        link = connector.links[new.service_name.lower()]
        assert link is not first and link.attempts == 1 and not first.running
    finally:
        connector.stopService()
        await viewer.close()


class Dropper:
    """A listening terminal that ends each connection: at once, or after ``hold`` seconds."""

    def __init__(self) -> None:
        self.hold = 0.0
        self.connected: list[float] = []  # time.monotonic() of each connection
        self.dropped: list[float] = []
        self.port: IListeningPort | None = None

    def listen(self) -> int:
        factory = protocol.Factory.forProtocol(lambda: _Dropping(self))
        self.port = reactor.listenTCP(0, factory, interface=LOOPBACK)  # type: ignore[attr-defined]
        return self.port.getHost().port  # type: ignore[no-any-return, attr-defined]


class _Dropping(protocol.Protocol):
    def __init__(self, dropper: Dropper) -> None:
        self.dropper = dropper

    def connectionMade(self) -> None:
        self.dropper.connected.append(time.monotonic())
        reactor.callLater(self.dropper.hold, self.transport.loseConnection)  # type: ignore[attr-defined, union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.dropper.dropped.append(time.monotonic())


@pytest_twisted.ensureDeferred
async def test_connector_backs_off_from_a_terminal_that_drops_it_until_a_connection_lasts() -> None:
    dropper = Dropper()
    advert = advert_for(dropper.listen())
    connector = ReverseConnector(
        reactor,
        lambda _advert: rfb_server_factory(),
        initial_delay=0.1,
        max_delay=2.0,
        stable_after=0.5,
    )
    connector.startService()
    try:
        connector.terminal_added(advert)
        await wait_until(lambda: len(dropper.connected) >= 5, 15, "five dropped connections")
        dropper.hold = 1.0  # the next connection lasts: "stable"
        await wait_until(lambda: len(dropper.connected) >= 7, 15, "two more connections")
        waits = [dropper.connected[n + 1] - dropper.dropped[n] for n in range(6)]
        # Each drop doubles the delay (0.1 s, 0.2 s, ... each within 10 %) ...
        for n in range(5):
            assert waits[n] >= 0.9 * 0.1 * 2**n, waits
        # ... until a connection that lasted starts the delays over (else 2 s now).
        assert waits[5] < 1.0, waits
    finally:
        connector.stopService()
        assert dropper.port is not None
        await dropper.port.stopListening()


# -- zeroconf between two processes on loopback ---------------------------------------------------


class Events:
    """What a TerminalBrowser reported, for this test's terminals only."""

    def __init__(self, prefix: str, connector: ReverseConnector | None = None) -> None:
        self.prefix = prefix
        self.connector = connector
        self.log: list[tuple[str, TerminalAdvert]] = []

    def callbacks(self, kind: str) -> Callable[[TerminalAdvert], None]:
        def record(advert: TerminalAdvert) -> None:
            if advert.instance.startswith(self.prefix):
                self.log.append((kind, advert))
            if self.connector is not None:
                getattr(self.connector, f"terminal_{kind}")(advert)

        return record

    def browser(self, **options: object) -> TerminalBrowser:
        return TerminalBrowser(
            self.callbacks("added"),
            self.callbacks("updated"),
            self.callbacks("removed"),
            **options,  # type: ignore[arg-type]
        )

    def kinds(self, instance: str) -> list[str]:
        return [kind for kind, advert in self.log if advert.instance == instance]

    def last(self, instance: str) -> TerminalAdvert:
        return [advert for _kind, advert in self.log if advert.instance == instance][-1]


VALID = {"id": "00:1A:2B:3C:4D:5E", "model": "Test terminal", "screen": "1280x1024", "proto": "1"}


@pytest_twisted.ensureDeferred
async def test_browser_follows_a_terminal_published_by_another_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.discovery")
    prefix = f"ts-{secrets.token_hex(4)}"
    name, newer, broken = f"{prefix}-term", f"{prefix}-newer", f"{prefix}-broken"
    events = Events(prefix)
    browser = events.browser(interfaces=[LOOPBACK], ipv4_only=True, settle_delay=1.2)
    await browser.start()
    publisher = ZeroconfPublisher(SERVICE_TYPE, "127.0.0.1")
    try:
        await publisher.ready()
        await publisher.send("register", name, 5901, LOOPBACK, **VALID)
        await publisher.send("register", newer, 5901, LOOPBACK, **{**VALID, "proto": "3"})
        await publisher.send("register", broken, 5901, LOOPBACK, **{**VALID, "screen": "huge"})
        await wait_until(lambda: events.kinds(name) == ["added"], 10, "the terminal")
        found = events.last(name)
        assert found.terminal_id == VALID["id"].lower()
        assert (found.model, found.screen) == (VALID["model"], VALID["screen"])
        assert (found.port, found.addresses, found.proto) == (5901, (LOOPBACK,), 1)

        # The terminal moves to another address: an update with only the new address.
        await publisher.send("update", name, 5901, "127.0.0.2", **VALID)
        await wait_until(
            lambda: (
                events.kinds(name)[-1:] == ["updated"]
                and events.last(name).addresses == ("127.0.0.2",)
            ),
            10,
            "the new address",
        )

        # It goes, and comes back on another port.
        await publisher.send("unregister", name, 5901, "127.0.0.2", **VALID)
        await wait_until(lambda: events.kinds(name)[-1:] == ["removed"], 10, "the removal")
        await publisher.send("register", name, 5902, "127.0.0.2", **VALID)
        await wait_until(lambda: events.kinds(name)[-1:] == ["added"], 10, "the comeback")
        assert events.last(name).port == 5902

        # A new port while advertised is an update.
        await publisher.send("update", name, 5903, "127.0.0.2", **VALID)
        await wait_until(
            lambda: events.last(name).port == 5903 and events.kinds(name)[-1] == "updated",
            10,
            "the new port",
        )

        # An update that breaks the contract makes it go away; a fix brings it back.
        await publisher.send("update", name, 5903, "127.0.0.2", **{**VALID, "screen": "0x0"})
        await wait_until(lambda: events.kinds(name)[-1:] == ["removed"], 10, "the broken update")
        await publisher.send("update", name, 5903, "127.0.0.2", **VALID)
        await wait_until(lambda: events.kinds(name)[-1:] == ["added"], 10, "the fixed advert")

        assert events.kinds(newer) == [] and events.kinds(broken) == []
        messages = [r.getMessage() for r in caplog.records]
        assert any(newer in m and "contract version 3" in m for m in messages)
        assert any(broken in m and "screen is not WIDTHxHEIGHT" in m for m in messages)
        assert sum(broken in m for m in messages) == 1  # once, though resolved again
    finally:
        await publisher.child.stop()
        await browser.stop()


# -- Avahi, in a network namespace ---------------------------------------------------------------
@pytest.fixture
def avahi(tmp_path: Path) -> Iterator[PrivateAvahi]:
    problem = avahi_problem()
    if problem is not None:
        need(False, f"the Avahi test cannot run: {problem}; install {AVAHI_PACKAGES}")
    netns = NetNamespace()
    daemons = PrivateAvahi(netns, tmp_path)
    try:
        netns.create()
        daemons.start()
        yield daemons
    finally:
        daemons.stop()
        netns.delete()


@pytest_twisted.ensureDeferred
async def test_avahi_sees_thinserve_and_thinserve_dials_an_avahi_terminal(
    avahi: PrivateAvahi,
) -> None:
    token = secrets.token_hex(4)
    server_name = f"thinserve test {token}"
    with avahi.netns.entered():
        # Every socket below (mDNS, RFB listener, viewer, reverse connection) is in the namespace.
        rfb_port = reactor.listenTCP(0, rfb_server_factory(), interface=LOOPBACK)  # type: ignore[attr-defined]
        advertiser = ServerAdvertiser(
            rfb_port.getHost().port, server_name, interfaces=[LOOPBACK], ipv4_only=True
        )
        connector = ReverseConnector(
            reactor, lambda _advert: rfb_server_factory(), initial_delay=0.2
        )
        connector.startService()
        events = Events(f"avahi term {token}", connector)
        browser = events.browser(interfaces=[LOOPBACK], ipv4_only=True)
        viewer = ListeningViewer()
        publish: Child | None = None
        try:
            await advertiser.start()
            listing = await run(["avahi-browse", "-rptk", "_rfb._tcp"], avahi.env)
            found = resolved_services(listing)
            assert server_name in found, listing
            _host, address, port, _txt = found[server_name]
            assert (address, int(port)) == (LOOPBACK, rfb_port.getHost().port)

            await browser.start()
            viewer_port = viewer.listen()
            terminal = f"avahi term {token}"
            publish = Child.spawn(
                [
                    "avahi-publish",
                    "-s",
                    terminal,
                    "_thinserve-term._tcp",
                    str(viewer_port),
                    f"id=term-{token}",
                    "model=Avahi test",
                    "screen=64x48",
                    "proto=1",
                ],
                avahi.env,
            )
            await publish.wait_for("Established under name")
            await wait_until(lambda: events.kinds(terminal) == ["added"], 10, "the terminal")
            advert = events.last(terminal)
            assert (advert.terminal_id, advert.model, advert.screen) == (
                f"term-{token}",
                "Avahi test",
                "64x48",
            )
            assert (advert.port, advert.addresses) == (viewer_port, (LOOPBACK,))
            await wait_until(lambda: bool(viewer.frames), 10, "the reverse connection")
            assert_saw_the_fixed_desktop(viewer)

            # avahi-publish ends: Avahi says goodbye, thinserve forgets the terminal.
            await publish.stop()
            await wait_until(lambda: events.kinds(terminal)[-1:] == ["removed"], 10, "removal")
            assert not connector.links[advert.service_name.lower()].advertised

            await advertiser.stop()
            await wait_until_withdrawn(avahi, server_name)
        finally:
            if publish is not None:
                await publish.stop()
            connector.stopService()
            await browser.stop()
            await advertiser.stop()
            await viewer.close()
            await rfb_port.stopListening()


async def wait_until_withdrawn(avahi: PrivateAvahi, name: str) -> None:
    async def withdrawn() -> bool:
        listing = await run(["avahi-browse", "-rptk", "_rfb._tcp"], avahi.env)
        return name not in resolved_services(listing)

    await wait_until(withdrawn, 10, f"{name!r} to be withdrawn", interval=0.3)


# -- what thinserve's _rfb._tcp advert lists ------------------------------------------------------
RFB_BROWSER = r"""
import asyncio, json, sys
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

TYPE = "_rfb._tcp.local."

async def main():
    zc = AsyncZeroconf(interfaces=[sys.argv[1]], ip_version=IPVersion.V4Only)
    names = asyncio.Queue()
    def changed(zeroconf, service_type, name, state_change):
        if state_change is ServiceStateChange.Added:
            names.put_nowait(name)
    browser = AsyncServiceBrowser(zc.zeroconf, [TYPE], handlers=[changed])
    print("ready", flush=True)
    resolving = set()
    while True:
        task = asyncio.create_task(resolve(zc, await names.get()))
        resolving.add(task)
        task.add_done_callback(resolving.discard)

async def resolve(zc, name):
    # Each name on its own, until it resolves: on a busy machine one try can
    # time out, and a name tried only once would never be printed.
    while True:
        info = AsyncServiceInfo(TYPE, name)
        if await info.async_request(zc.zeroconf, 3000):
            found = {"name": name, "port": info.port, "addresses": info.parsed_addresses()}
            print(json.dumps(found), flush=True)
            return

asyncio.run(main())
"""


def rfb_adverts(child: Child) -> dict[int, list[str]]:
    """port -> addresses, of the _rfb._tcp services the browser child resolved."""
    found = [json.loads(line) for line in child.text.splitlines() if line.startswith("{")]
    return {advert["port"]: advert["addresses"] for advert in found}


@pytest.fixture
def lan() -> Iterator[Lan]:
    problem = lan_problem()
    need(problem is None, f"the LAN test cannot run: {problem}")
    subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
    network = Lan(subnet, prefix="tsmd")
    try:
        network.create()
        network.add_host("viewer", 2)
        yield network
    finally:
        network.delete()


@pytest_twisted.ensureDeferred
async def test_the_rfb_advert_lists_only_the_addresses_thinserve_listens_on(
    lan: Lan, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="thinserve.service")
    server = lan.server_address
    config = Config(
        # Loopback only (first, so its advert would come first), the LAN address, every address.
        listen=(
            "tcp:port=0:interface=127.0.0.1",
            f"tcp:port=0:interface={server}",
            "tcp:port=0",
        ),
        web_listen=(),
        dashboard_listen=(),
        name=f"ts{secrets.token_hex(3)}",
        database=":memory:",
        admin_socket="",
        discovery=True,
        desktops=(DesktopConfig("d1", "127.0.0.1:1"),),
        local_desktops=(),
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        source="test",
    )
    ts = ThinServe(config, reactor)
    with lan.server.entered():  # its ports and its mDNS sockets belong to the server's namespace
        await ts.startService()
    browser = Child.spawn(
        lan.hosts["viewer"].command([sys.executable, "-c", RFB_BROWSER, lan.address(2)])
    )
    try:
        loopback, on_lan, everywhere = ts.port_numbers
        await browser.wait_for("ready\n", 15)
        await wait_until(
            lambda: {on_lan, everywhere} <= set(rfb_adverts(browser)),
            20,
            lambda: f"both adverts on the LAN (seen: {browser.text[-500:]!r})",
            browser,
        )
        adverts = rfb_adverts(browser)
        assert adverts[on_lan] == [server]
        assert adverts[everywhere] == [server]  # the namespace's one address beyond loopback
        assert loopback not in adverts  # announced first had it been advertised
        said = [r.getMessage() for r in caplog.records]
        assert (
            f"not advertising 127.0.0.1:{loopback} over zeroconf: it listens on loopback only, "
            "which a viewer on the LAN cannot reach"
        ) in said
    finally:
        await browser.stop()
        await ts.stopService()


def test_advertised_addresses_follow_what_a_port_is_bound_to() -> None:
    here = local_addresses()
    assert advertised_addresses("0.0.0.0") == [a for a in here if "." in a]
    assert advertised_addresses("::") == here
    assert advertised_addresses("0.0.0.0", ["10.1.2.3"]) == ["10.1.2.3"]
    assert advertised_addresses("10.1.2.3") == ["10.1.2.3"]
    assert advertised_addresses("10.1.2.3", ["10.1.2.3", "10.9.9.9"]) == ["10.1.2.3"]
    assert advertised_addresses("10.1.2.4", ["10.1.2.3"]) == []  # mDNS does not run there
    assert advertised_addresses("127.0.0.1") == []  # no other machine can reach it
    assert advertised_addresses("::1") == []
    assert advertised_addresses("127.0.0.1", ["127.0.0.1"]) == ["127.0.0.1"]  # chosen: loopback
