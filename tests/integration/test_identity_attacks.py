"""An attacker on the terminals' LAN, for real: can it get a terminal's desktop?

Everything runs in network namespaces the test makes (tests/support/netns.py
``Lan``), on the private subnet 10.213.7.0/24:

- ``server`` (10.213.7.1, a bridge): a real ``thinserve serve`` process,
  its admin socket on the file system, showing one desktop: a real Xvnc
  that the test starts off the LAN (thinserve reaches it through a Unix
  socket, which network namespaces do not separate) and paints with
  pictures whose every pixel has a green channel of 0 or 255, which none of
  thinserve's own screens has;
- ``term`` (10.213.7.2): the legitimate terminal;
- ``attk`` (10.213.7.3): the attacker, who can also take the terminal's
  address (removing it from the terminal, adding it here, and announcing it
  with a gratuitous ARP, as any machine on a real LAN can).

The terminals and the attacker are thinserve's own RFB client in this
process, their sockets made inside their namespaces.  Beyond loopback
thinserve offers VeNCrypt X509 subtypes only, so every one of them speaks
X509None and pins the server's certificate; a terminal with a key also
shows a client certificate.

Each attacker records every rectangle thinserve sends it: it must never
receive one pixel of the desktop.  What the broker thinks is read through
the admin API (the ``thinserve`` command, and thinserve.admin.client),
down to its session history: who controlled the desktop, ever.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import protocol, reactor, threads
from twisted.internet.interfaces import IListeningPort

from protocols.identity import public_key_fingerprint, terminal_id
from protocols.rfb.client import ClientEvent, CursorShape, ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding, SecurityType, VeNCryptSubtype
from protocols.terminal import SERVICE_TYPE, TerminalAdvert
from tests.support.adverts import ZeroconfPublisher
from tests.support.need import need
from tests.support.netns import Lan, lan_problem
from tests.support.pixels import diff_summary
from tests.support.procs import Spawned, spawn
from tests.support.waiting import wait_until, wait_until_blocking
from tests.support.xvnc import XvncServer
from thinserve import rfbclient
from thinserve.admin.client import AdminClient, AdminError
from thinserve.relay import screens
from thinserve.tls import ClientCertificate

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)

SUBNET = "10.213.7"
SERVER, TERMINAL, ATTACKER, TERMINAL_MOVED = 1, 2, 3, 4  # host numbers on the subnet
TERMINAL_ADDRESS = f"{SUBNET}.{TERMINAL}"
PORT = 5900
DESKTOP = "d1"
SIZE = (640, 480)
WAIT = 30.0  # seconds any one expected change may take
START_WAIT = 60.0  # seconds thinserve may take to start and reach its desktop

# Lossless encodings, and the pseudo-encodings that let thinserve resize the
# terminal and send the cursor apart from the pixels.  No CopyRect: every
# rectangle received carries pixels thinserve chose to send.
ENCODINGS = (
    Encoding.ZRLE,
    Encoding.HEXTILE,
    Encoding.RAW,
    Encoding.CURSOR,
    Encoding.DESKTOP_SIZE,
    Encoding.EXTENDED_DESKTOP_SIZE,
)
KEYLESS = (VeNCryptSubtype.X509_NONE,)

T = TypeVar("T")


# -- pictures ---------------------------------------------------------------------------------
# Every desktop pixel has a green channel of 0 or 255.  thinserve's screens are
# drawn in colours whose green lies between 44 and 244 (screens.BACKGROUND,
# FOREGROUND, ACCENT, DIM and the anti-aliased blends between them), so one
# such pixel on an attacker's screen is a pixel of the desktop.
PALETTE = np.array(
    [0xFF00FF, 0x00FF00, 0x0000FF, 0xFFFF00, 0x00FFFF, 0xFF0000, 0xFFFFFF], dtype=np.uint32
)


def desktop_picture(seed: int) -> np.ndarray:
    """A distinctive desktop: 16x16 blocks of PALETTE colours, and a stripe."""
    width, height = SIZE
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(PALETTE), size=(height // 16, width // 16))
    frame = PALETTE[np.kron(blocks, np.ones((16, 16), dtype=np.int64))]
    frame[seed * 7 % height : seed * 7 % height + 5, :] = PALETTE[seed % len(PALETTE)]
    return frame.astype(np.uint32)


def desktop_like(pixels: np.ndarray) -> np.ndarray:
    """Which pixels could only have come from the desktop."""
    green = (pixels >> 8) & 0xFF
    return (green == 0) | (green == 0xFF)


def pairing_screen(row: dict[str, Any]) -> np.ndarray:
    """What a terminal must show for the pairing screen the admin API reports."""
    text = screens.pairing(row["id"], row["pairing_code"], row["shows"]["message"])
    return screens.render(text, row["session"]["width"], row["session"]["height"])


# -- keys --------------------------------------------------------------------------------------
def make_identity(common_name: str) -> tuple[ClientCertificate, str]:
    """A terminal's EC P-256 key and a self-signed certificate for it; and
    the terminal id thinserve must give whoever proves that key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )
    return _signed(builder)


def copied_identity(victim: ClientCertificate) -> tuple[ClientCertificate, str]:
    """The attacker's forgery: the terminal's certificate (which TLS 1.2 sends
    in the clear) copied field for field (names, serial number, validity),
    but around the attacker's own key, which is all it can sign with."""
    original = victim.certificate
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .serial_number(original.serial_number)
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
    )
    return _signed(builder)


def _signed(builder: x509.CertificateBuilder) -> tuple[ClientCertificate, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = builder.public_key(key.public_key()).sign(key, hashes.SHA256())
    return ClientCertificate(certificate, key), terminal_id(
        public_key_fingerprint(key.public_key())
    )


# -- thinserve in the server namespace ------------------------------------------------------
@dataclass
class Site:
    """The LAN, thinserve serving the desktop on it, and the viewers connected to it."""

    lan: Lan
    xvnc: XvncServer
    workdir: Path
    proc: Spawned | None = None
    socket: Path = field(init=False)
    viewers: list[Viewer] = field(default_factory=list)
    publishers: list[ZeroconfPublisher] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.socket = self.workdir / "admin" / "admin.sock"
        self.admin = AdminClient(self.socket, timeout=10)

    @property
    def server(self) -> str:
        return self.lan.server_address

    @property
    def ca_file(self) -> Path:
        """thinserve's own certificate, made at its first start: what viewers pin."""
        return self.workdir / "state" / "tls" / "server.crt"

    def start(self, discovery: bool) -> None:
        self.socket.parent.mkdir(mode=0o700)
        config = self.workdir / "thinserve.toml"
        config.write_text(
            "[server]\n"
            f"listen = {json.dumps([f'tcp:port={PORT}:interface={self.server}'])}\n"
            "web_listen = []\n"
            f"database = {json.dumps(str(self.workdir / 'state' / 'thinserve.db'))}\n"
            f"admin_socket = {json.dumps(str(self.socket))}\n"
            "[discovery]\n"
            f"enabled = {json.dumps(discovery)}\n"
            f"interfaces = {json.dumps([self.server])}\n"
            "[[desktop]]\n"
            f"name = {json.dumps(DESKTOP)}\n"
            f"address = {json.dumps('unix:' + str(self.workdir / 'xvnc.sock'))}\n"
        )
        state = ["--state-dir", str(self.workdir / "state")]
        command = self.lan.server.command([*THINSERVE, "serve", "--config", str(config), *state])
        self.proc = spawn(command, self.workdir / "thinserve.log")
        wait_until_blocking(
            self._desktop_live, START_WAIT, "thinserve and its live desktop", self.proc
        )
        assert self.ca_file.exists(), self.proc.log_tail()

    def _desktop_live(self) -> bool:
        try:
            desktops = self.admin.desktops()
        except AdminError:
            return False  # not answering yet
        return any(d["name"] == DESKTOP and d["mirror"] == "live" for d in desktops)

    def stop(self) -> None:
        for publisher in self.publishers:
            publisher.kill()
        for viewer in self.viewers:
            viewer.abort()
        if self.proc is not None:
            self.proc.stop()

    # -- waiting ----------------------------------------------------------------------------
    async def wait(self, check: Callable[[], T | None], what: str) -> T:
        """Until ``check()`` gives something true; that."""
        return await wait_until(check, WAIT, what, self.proc)

    # -- the admin API ---------------------------------------------------------------------------
    async def terminals(self) -> list[dict[str, Any]]:
        return await threads.deferToThread(self.admin.terminals)

    async def row(self, terminal: str) -> dict[str, Any] | None:
        return next((r for r in await self.terminals() if r["id"] == terminal), None)

    async def desktop(self) -> dict[str, Any]:
        desktops = await threads.deferToThread(self.admin.desktops)
        return next(d for d in desktops if d["name"] == DESKTOP)

    async def controllers(self) -> list[tuple[str, bool]]:
        """The session history, oldest first: each terminal that controlled
        the desktop, and whether it still does."""
        sessions = await threads.deferToThread(self.admin.sessions, 1000)
        assert all(s["desktop"] == DESKTOP for s in sessions)
        return [(s["terminal"], s["ended"] is None) for s in reversed(sessions)]

    async def wait_rows(self, check: Callable[[list[dict[str, Any]]], T | None], what: str) -> T:
        """Until ``check(rows)`` of the terminals the API lists gives something."""
        rows: list[dict[str, Any]] = []

        async def found() -> T | None:
            rows[:] = await self.terminals()
            return check(rows)

        def listing() -> str:
            return f"{what}; the API lists:\n{json.dumps(rows, indent=1)[-3000:]}"

        return await wait_until(found, WAIT, listing, self.proc, interval=0.1)

    async def wait_row(
        self, terminal: str, check: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def found(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
            row = next((r for r in rows if r["id"] == terminal), None)
            return row if row is not None and check(row) else None

        return await self.wait_rows(found, f"{terminal}: {what}")

    async def wait_gone(self, terminal: str) -> None:
        await self.wait_row(terminal, lambda row: not row["connected"], "disconnected")

    async def cli(self, *args: str) -> str:
        """Run the real ``thinserve`` admin command; its output (it must succeed)."""
        argv = [*THINSERVE, *args, "--socket", str(self.socket)]
        done = await threads.deferToThread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60, cwd=REPO
        )
        assert done.returncode == 0, f"thinserve {' '.join(args)}: {done.stderr}"
        return str(done.stdout)

    async def pairing_row(self, viewer: Viewer) -> dict[str, Any]:
        """The connected terminal whose pairing screen ``viewer`` shows, pixel for pixel."""

        def on_screen(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
            for row in rows:
                shows = row["shows"] or {}
                pairing = row["connected"] and shows.get("kind") == "pairing" and row["session"]
                if pairing and viewer.shows(pairing_screen(row)):
                    return row
            return None

        return await self.wait_rows(on_screen, f"{viewer.label} to show its pairing screen")


# -- terminals and attackers -----------------------------------------------------------------
class Viewer:
    """One RFB client on the LAN (a terminal, or an attacker): it keeps asking
    for updates, and counts the desktop pixels in every rectangle it receives."""

    def __init__(
        self,
        site: Site,
        label: str,
        certificate: ClientCertificate | None = None,
        methods: tuple[int, ...] = KEYLESS,
    ) -> None:
        self.site = site
        self.label = label
        self.options = rfbclient.ClientOptions(
            methods=methods, ca_file=str(site.ca_file), client_certificate=certificate
        )
        self.protos: list[rfbclient.RFBClientProtocol] = []
        self.inits: list[ServerInitReceived] = []
        self.updates = 0
        self.desktop_pixels = 0  # received in any rectangle, ever
        self.cursors = 0  # cursor shapes received (thinserve's screens have none)
        self.closed = 0  # connections that ended
        self.listening: IListeningPort | None = None
        site.viewers.append(self)

    @property
    def proto(self) -> rfbclient.RFBClientProtocol:
        assert self.protos, f"{self.label} never connected"
        return self.protos[-1]

    @property
    def framebuffer(self) -> np.ndarray:
        return self.proto.conn.framebuffer

    def shows(self, want: np.ndarray) -> bool:
        got = self.framebuffer
        return got.shape == want.shape and np.array_equal(got, want)

    async def connect(self, host: str, address: str) -> Viewer:
        """Connect from namespace ``host``, from its address ``address``."""
        endpoint = f"{rfbclient.tcp(self.site.server, PORT)}:bindAddress={address}"
        with self.site.lan.hosts[host].entered():  # the socket belongs to the namespace
            connecting = rfbclient.connect(endpoint, self.options, self._on_event)
        connecting.addTimeout(WAIT, reactor)
        self._track(await connecting)
        await self.site.wait(
            lambda: self.updates > 0 or self.closed, f"{self.label}'s first picture"
        )
        return self

    def listen(self, host: str, address: str) -> int:
        """Listen in namespace ``host`` like a VNC listening viewer; the port."""

        def build() -> rfbclient.RFBClientProtocol:
            proto = rfbclient.RFBClientProtocol(self.options, self._on_event)
            self._track(proto)
            return proto

        with self.site.lan.hosts[host].entered():
            self.listening = reactor.listenTCP(  # type: ignore[attr-defined]
                0, protocol.Factory.forProtocol(build), interface=address
            )
        return int(self.listening.getHost().port)  # type: ignore[union-attr]

    def _track(self, proto: rfbclient.RFBClientProtocol) -> None:
        if proto not in self.protos:
            self.protos.append(proto)
            proto.closed.addBoth(self._closed)

    def _closed(self, reason: object) -> None:
        self.closed += 1

    def _on_event(self, proto: rfbclient.RFBClientProtocol, event: ClientEvent) -> None:
        conn = proto.conn
        if isinstance(event, ServerInitReceived):
            self.inits.append(event)
            conn.set_encodings(ENCODINGS)
            conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            for r in event.rects:
                received = conn.framebuffer[r.y : r.y + r.h, r.x : r.x + r.w]
                self.desktop_pixels += int(np.count_nonzero(desktop_like(received)))
            self.updates += 1
            conn.request_update(incremental=True)
        elif isinstance(event, CursorShape):
            self.cursors += 1

    async def wait_screen(self, want: np.ndarray, what: str) -> None:
        try:
            await self.site.wait(lambda: self.shows(want), f"{self.label} to show {what}")
        except AssertionError as exc:
            got = self.framebuffer if self.protos else np.zeros((0, 0), np.uint32)
            raise AssertionError(f"{exc} ({diff_summary(got, want)})") from None

    def assert_saw_nothing_of_the_desktop(self) -> None:
        assert self.desktop_pixels == 0, f"{self.label} received {self.desktop_pixels} pixels"
        assert not desktop_like(self.framebuffer).any()
        assert self.cursors == 0, f"{self.label} received the desktop's cursor"
        # The ServerInit named thinserve's own screen, not the desktop.
        assert [i.name for i in self.inits] == ["thinserve"] * len(self.inits)

    def assert_connected(self, connections: int = 1) -> None:
        """Still on its connection: none of its ``connections`` ever ended."""
        assert len(self.protos) == connections and self.closed == 0, (
            f"{self.label}: {self.closed} of {len(self.protos)} connections ended"
            f" ({self.proto.error})"
        )

    async def close(self) -> None:
        for proto in self.protos:
            if proto.transport is not None:
                proto.transport.loseConnection()
        await self.site.wait(lambda: self.closed == len(self.protos), f"{self.label} to close")

    async def stop_listening(self) -> None:
        if self.listening is not None:
            await self.listening.stopListening()

    def abort(self) -> None:
        for proto in self.protos:
            if proto.transport is not None:
                proto.transport.abortConnection()
        if self.listening is not None:
            self.listening.stopListening()


# -- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def start_site(xvnc: Callable[..., XvncServer], tmp_path: Path) -> Iterator[Callable[..., Site]]:
    """Factory: the LAN, the desktop, and ``thinserve serve`` in the server namespace."""
    problem = lan_problem()
    if problem is not None:
        need(False, f"the LAN of network namespaces cannot be made: {problem}; install iproute2")
    lan = Lan(SUBNET, prefix="tsid")
    sites: list[Site] = []

    def start(discovery: bool = False) -> Site:
        workdir = tmp_path / "site"
        workdir.mkdir()
        server = xvnc(size=SIZE, extra_args=("-rfbunixpath", str(workdir / "xvnc.sock")))
        server.paint(desktop_picture(1))
        lan.create()
        lan.add_host("term", TERMINAL)
        lan.add_host("attk", ATTACKER)
        site = Site(lan, server, workdir)
        sites.append(site)
        site.start(discovery)
        return site

    try:
        yield start
    finally:
        for site in sites:
            site.stop()
        lan.delete()


async def paint(site: Site, seed: int) -> np.ndarray:
    """Show a new picture on the desktop; the picture."""
    frame = desktop_picture(seed)
    await threads.deferToThread(site.xvnc.paint, frame)
    return frame


# -- 1. keyless viewers: each connection is a terminal of its own ---------------------------------
@pytest_twisted.ensureDeferred
async def test_a_second_keyless_viewer_from_a_bound_address_gets_its_own_pairing_screen(
    start_site: Callable[..., Site],
) -> None:
    site = start_site()
    desktop = desktop_picture(1)

    # Security type None, as vncdotool offers, is not on offer beyond loopback.
    plain = Viewer(site, "a viewer without TLS", methods=(SecurityType.NONE,))
    await plain.connect("term", TERMINAL_ADDRESS)
    assert plain.closed == 1 and not plain.inits and plain.updates == 0
    vencrypt_only = f"server offers security types [{int(SecurityType.VENCRYPT)}]"
    assert plain.proto.error == f"{vencrypt_only}, none accepted here"

    first = await Viewer(site, "the first viewer").connect("term", TERMINAL_ADDRESS)
    row = await site.pairing_row(first)
    assert row["id"].startswith(f"viewer-{TERMINAL_ADDRESS}~"), row["id"]
    assert (row["identity"], row["address"], row["paired_desktop"]) == (
        "connection",
        TERMINAL_ADDRESS,
        None,
    )
    assert not desktop_like(pairing_screen(row)).any()  # the marker colours are the desktop's
    said = await site.cli("pair", "--code", row["pairing_code"], "--by-address", DESKTOP)
    bound = f"viewer-{TERMINAL_ADDRESS}"
    shows = f"it now shows {DESKTOP} (control)"
    assert said.strip() == f"paired {bound} with {DESKTOP} by address; {shows}"
    await first.wait_screen(desktop, "the desktop")
    row = await site.wait_row(bound, lambda r: r["connected"], "connected")
    assert row["identity"] == "address" and row["paired_desktop"] == DESKTOP
    assert row["shows"] == {"kind": "desktop", "desktop": DESKTOP, "control": True}

    # Another keyless connection from the same address: the address is taken,
    # so it is a terminal of its own, for this connection only.
    second = await Viewer(site, "a second viewer at that address").connect("term", TERMINAL_ADDRESS)
    other = await site.pairing_row(second)
    assert other["id"].startswith(f"viewer-{TERMINAL_ADDRESS}~") and other["id"] != row["id"]
    assert other["identity"] == "connection" and other["paired_desktop"] is None

    # The first keeps its connection, its desktop, and its updates.
    changed = await paint(site, 2)
    await first.wait_screen(changed, "the changed desktop")
    assert second.shows(pairing_screen(other))
    second.assert_saw_nothing_of_the_desktop()
    first.assert_connected()
    row = await site.row(bound)
    assert row is not None and row["connected"] and row["shows"]["desktop"] == DESKTOP
    assert await site.controllers() == [(bound, True)]  # one session, never interrupted

    # The second goes: thinserve forgets it; the first goes on.
    await second.close()
    await site.wait_rows(
        lambda rows: all(r["id"] != other["id"] for r in rows) or None,
        f"{other['id']} to be forgotten",
    )
    final = await paint(site, 3)
    await first.wait_screen(final, "the desktop again")
    first.assert_connected()
    second.assert_saw_nothing_of_the_desktop()
    assert await site.controllers() == [(bound, True)]


# -- 2. an address binding is the address; a pairing by code is one connection -------------------
@pytest_twisted.ensureDeferred
async def test_an_address_binding_goes_with_the_address_a_code_pairing_with_the_connection(
    start_site: Callable[..., Site],
) -> None:
    site = start_site()
    lan = site.lan
    desktop = desktop_picture(1)
    bound = f"viewer-{TERMINAL_ADDRESS}"

    terminal = await Viewer(site, "the terminal").connect("term", TERMINAL_ADDRESS)
    row = await site.pairing_row(terminal)
    await site.cli("pair", "--code", row["pairing_code"], "--by-address", DESKTOP)
    await terminal.wait_screen(desktop, "the desktop")

    # The terminal goes away, and the attacker takes its address.
    await terminal.close()
    await site.wait_gone(bound)
    lan.remove_address("term", TERMINAL)
    lan.add_address("attk", TERMINAL)

    # The admin's explicit trade-off: `pair --by-address` trusts every device
    # that can use that address, so the attacker at it DOES get the desktop.
    # Only a key (case 3) ties a pairing to one device.
    taker = await Viewer(site, "the attacker at the bound address").connect(
        "attk", TERMINAL_ADDRESS
    )
    await taker.wait_screen(desktop, "the desktop (the trade-off of --by-address)")
    row = await site.wait_row(bound, lambda r: r["connected"], "connected again")
    assert row["identity"] == "address" and row["shows"]["desktop"] == DESKTOP

    # The admin unbinds the address: the attacker is back on a pairing screen.
    await site.cli("unpair", bound)
    await site.pairing_row(taker)
    await taker.close()
    await site.wait_gone(bound)
    lan.remove_address("attk", TERMINAL)

    # The terminal comes back; this time the admin pairs it by its code only,
    # which pairs this one connection.
    lan.add_address("term", TERMINAL)
    terminal = await Viewer(site, "the terminal, back").connect("term", TERMINAL_ADDRESS)
    row = await site.pairing_row(terminal)
    assert row["id"].startswith(f"{bound}~") and row["identity"] == "connection"
    said = await site.cli("pair", "--code", row["pairing_code"], DESKTOP)
    assert f"paired {row['id']} with {DESKTOP} for this connection only" in said
    await terminal.wait_screen(desktop, "the desktop")
    assert (await site.desktop())["paired_terminal"] == row["id"]

    # It goes away: the pairing, and the terminal, are gone with the connection.
    await terminal.close()
    await site.wait_rows(
        lambda rows: all(r["id"] != row["id"] for r in rows) or None,
        f"{row['id']} to be forgotten",
    )
    assert (await site.desktop())["paired_terminal"] is None
    lan.remove_address("term", TERMINAL)
    lan.add_address("attk", TERMINAL)

    attacker = await Viewer(site, "the attacker at the address").connect("attk", TERMINAL_ADDRESS)
    mine = await site.pairing_row(attacker)
    assert mine["id"] not in (row["id"], bound) and mine["id"].startswith(f"{bound}~")
    assert mine["paired_desktop"] is None and mine["identity"] == "connection"
    attacker.assert_saw_nothing_of_the_desktop()
    attacker.assert_connected()
    # The terminal, the attacker at the bound address, the terminal again.
    assert await site.controllers() == [(bound, False), (bound, False), (row["id"], False)]


# -- 3. a terminal with a key: its pairing is the key's -------------------------------------------
@pytest_twisted.ensureDeferred
async def test_only_the_key_gets_a_keyed_terminals_desktop_wherever_it_connects_from(
    start_site: Callable[..., Site],
) -> None:
    site = start_site()
    lan = site.lan
    desktop = desktop_picture(1)
    key, key_id = make_identity("front-desk")
    other_key, other_id = copied_identity(key)

    terminal = await Viewer(site, "the keyed terminal", key).connect("term", TERMINAL_ADDRESS)
    row = await site.pairing_row(terminal)
    assert (row["id"], row["identity"], row["address"]) == (key_id, "key", TERMINAL_ADDRESS)
    said = await site.cli("pair", key_id, DESKTOP)
    assert said.strip() == f"paired {key_id} with {DESKTOP}; it now shows {DESKTOP} (control)"
    await terminal.wait_screen(desktop, "the desktop")
    table = await site.cli("terminals")
    assert any(line.split()[:2] == [key_id, "key"] for line in table.splitlines()), table

    # From the terminal's own address, without the key: a pairing screen each.
    keyless = await Viewer(site, "a keyless attacker at the terminal's address").connect(
        "term", TERMINAL_ADDRESS
    )
    keyless_row = await site.pairing_row(keyless)
    assert keyless_row["identity"] == "connection"
    claimant = await Viewer(site, "an attacker with a copied certificate", other_key).connect(
        "term", TERMINAL_ADDRESS
    )
    claimant_row = await site.pairing_row(claimant)
    assert (claimant_row["id"], claimant_row["identity"]) == (other_id, "key")
    assert claimant_row["paired_desktop"] is None

    # The terminal was never disconnected, and still gets every change.
    changed = await paint(site, 5)
    await terminal.wait_screen(changed, "the changed desktop")
    terminal.assert_connected()
    row = await site.wait_row(key_id, lambda r: r["connected"], "connected")
    assert row["shows"]["desktop"] == DESKTOP and row["address"] == TERMINAL_ADDRESS
    assert await site.controllers() == [(key_id, True)]
    for attacker in (keyless, claimant):
        attacker.assert_saw_nothing_of_the_desktop()
        attacker.assert_connected()
        await attacker.close()

    # The terminal goes away, and the attacker takes its address.
    await terminal.close()
    await site.wait_gone(key_id)
    lan.remove_address("term", TERMINAL)
    lan.add_address("attk", TERMINAL)
    attackers = [
        await Viewer(site, "a keyless attacker with the address").connect("attk", TERMINAL_ADDRESS),
        await Viewer(site, "an attacker with the address and a copy", other_key).connect(
            "attk", TERMINAL_ADDRESS
        ),
    ]
    for attacker in attackers:
        await site.pairing_row(attacker)
    row = await site.row(key_id)
    assert row is not None and not row["connected"] and row["paired_desktop"] == DESKTOP

    # The terminal comes back from another address: the key is what counts.
    moved = f"{SUBNET}.{TERMINAL_MOVED}"
    lan.add_address("term", TERMINAL_MOVED)
    terminal = await Viewer(site, "the keyed terminal, moved", key).connect("term", moved)
    await terminal.wait_screen(changed, "the desktop")
    final = await paint(site, 6)
    await terminal.wait_screen(final, "the changed desktop")
    row = await site.wait_row(key_id, lambda r: r["connected"], "connected again")
    assert row["address"] == moved and row["shows"]["desktop"] == DESKTOP
    for attacker in attackers:
        attacker.assert_saw_nothing_of_the_desktop()
        attacker.assert_connected()
    terminal.assert_connected()
    assert await site.controllers() == [(key_id, False), (key_id, True)]


# -- 4. a copied advert, over real mDNS -----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_copied_advert_gets_a_pairing_screen_not_the_desktop(
    start_site: Callable[..., Site],
) -> None:
    site = start_site(discovery=True)
    desktop = desktop_picture(1)
    key, key_id = make_identity("front-desk")
    fingerprint = public_key_fingerprint(key.key.public_key())
    other_key, _other_id = copied_identity(key)

    terminal = await Viewer(site, "the keyed terminal", key).connect("term", TERMINAL_ADDRESS)
    await site.pairing_row(terminal)
    await site.cli("pair", key_id, DESKTOP)
    await terminal.wait_screen(desktop, "the desktop")

    # The attacker copies what the terminal would advertise (its name, its id,
    # its key's fingerprint: all public) and listens behind it.
    attacker_address = f"{SUBNET}.{ATTACKER}"
    publisher = ZeroconfPublisher(SERVICE_TYPE, attacker_address, site.lan.hosts["attk"])
    site.publishers.append(publisher)
    await publisher.ready()
    for label, certificate in (
        ("a listening attacker without a key", None),
        ("a listening attacker with a copied certificate", other_key),
    ):
        viewer = Viewer(site, label, certificate)
        port = viewer.listen("attk", attacker_address)
        advert = TerminalAdvert.keyed("front-desk", fingerprint, "Nivo", 800, 600, port)
        assert advert.terminal_id == key_id
        txt = advert.build()
        await publisher.send("register", "front-desk", port, attacker_address, "attk", **txt)
        await site.wait(
            lambda v=viewer: v.updates > 0 or v.closed,  # type: ignore[misc]
            f"thinserve to dial {label}",
        )
        assert viewer.inits, f"{label}: {viewer.proto.error}"  # VeNCrypt's TLS came up
        row = await site.pairing_row(viewer)
        assert row["id"] != key_id and row["identity"] == "connection"
        assert row["address"] == attacker_address
        assert row["name"] == "front-desk"  # the claim is recorded, not believed
        assert "did not prove the key" in row["shows"]["message"]
        viewer.assert_saw_nothing_of_the_desktop()
        # The attacker withdraws, and ends the connection (thinserve keeps one
        # connection per advertised name, and would not dial the next one).
        await publisher.send("unregister", "front-desk", port, attacker_address, "attk", **txt)
        await viewer.stop_listening()
        await viewer.close()

    changed = await paint(site, 7)
    await terminal.wait_screen(changed, "the changed desktop")
    terminal.assert_connected()
    row = await site.wait_row(key_id, lambda r: r["connected"], "connected")
    assert row["shows"]["desktop"] == DESKTOP and row["address"] == TERMINAL_ADDRESS
    assert await site.controllers() == [(key_id, True)]
    for viewer in site.viewers[1:]:
        viewer.assert_saw_nothing_of_the_desktop()
    await publisher.stop()
