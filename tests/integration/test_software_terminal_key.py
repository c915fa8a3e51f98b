"""The software terminal's key, proven to a real thinserve, and its pin on the server.

thinserve-terminal runs headless as its own process and dials a real
thinserve (hub, broker, a real Xvnc desktop) on loopback through a terminal
port that offers VeNCrypt X509None (and None) with a certificate made for
the test.  The test computes the terminal's key fingerprint itself, from the
key file, with the ``cryptography`` package, and checks what thinserve saw.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor, threads
from twisted.internet.interfaces import IListeningPort

from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from tests.integration.test_relay import desktop
from tests.integration.test_software_terminal import Terminal as SoftwareTerminal
from tests.integration.test_software_terminal import (  # noqa: F401  (fixtures)
    pygame_installed,
    show_id,
    terminals,
)
from tests.support.server import start_thinserve
from tests.support.waiting import wait_until
from tests.unit.content import desktop_frame
from thinserve.broker import BrokerConfig, ScreenKind
from thinserve.reverse import connect_to_terminal
from thinserve.rfbserver import RFBServerFactory, ServerOptions
from thinserve.service import ThinServe
from thinserve.tls import make_self_signed

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
SIZE = (640, 480)


def fingerprint_of_key_file(path: Path) -> str:
    """SHA-256 of the public key's SubjectPublicKeyInfo (DER), base32, lower case, unpadded."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()).decode().rstrip("=").lower()


def fingerprint_of_certificate(path: str) -> str:
    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()).decode().rstrip("=").lower()


def key_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "thinserve-terminal" / "key.pem"


def known_servers(tmp_path: Path) -> Path:
    return tmp_path / "config" / "thinserve-terminal" / "known_servers"


def server_certificate(folder: Path) -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    make_self_signed(cert, key, "thinserve.test")
    return cert, key


class KeyedThinserve:
    """A real thinserve, and a terminal port of its hub offering X509None then None."""

    def __init__(self, ts: ThinServe) -> None:
        self.ts = ts
        self.port: IListeningPort | None = None

    def factory(self, certificate: tuple[str, str]) -> RFBServerFactory:
        cert, key = certificate
        options = ServerOptions(
            methods=(VeNCryptSubtype.X509_NONE, SecurityType.NONE), cert_file=cert, key_file=key
        )
        assert self.ts.hub is not None
        return RFBServerFactory(options, self.ts.hub.new_session)

    def listen(self, certificate: tuple[str, str], port: int = 0) -> int:
        self.port = reactor.listenTCP(port, self.factory(certificate), interface=LOOPBACK)
        return self.port.getHost().port

    async def dial(self, certificate: tuple[str, str], port: int) -> None:
        """Connect to a listening terminal, as thinserve does after discovery."""
        await connect_to_terminal(reactor, LOOPBACK, port, self.factory(certificate))

    async def close_port(self) -> None:
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()

    def proto(self, terminal_id: str) -> object:
        assert self.ts.hub is not None
        return self.ts.hub.terminals[terminal_id].session.proto

    def connected(self, terminal_id: str) -> bool:
        assert self.ts.hub is not None
        terminal = self.ts.hub.terminals.get(terminal_id)
        return terminal is not None and terminal.session.proto is not None

    def shows_pairing(self, terminal_id: str) -> bool:
        assert self.ts.hub is not None
        return self.ts.hub.broker.assignment(terminal_id).kind is ScreenKind.PAIRING


async def first_frame(terminal: SoftwareTerminal) -> None:
    """Until the terminal recorded a screen from thinserve (in connect mode thinserve
    draws it in its default size and scales it to the terminal's, so it is not
    compared pixel for pixel)."""
    await wait_until(lambda: terminal.latest() is not None, 20, "the terminal's first frame")


@pytest_twisted.async_yield_fixture
async def keyed_thinserve(xvnc) -> AsyncIterator[tuple[KeyedThinserve, object]]:  # type: ignore[no-untyped-def]
    server = xvnc(size=SIZE)
    server.paint(desktop_frame(*SIZE, seed=31))
    ts = await start_thinserve([desktop("d1", server)], broker=BrokerConfig())
    keyed = KeyedThinserve(ts)
    try:
        yield keyed, server
    finally:
        await keyed.close_port()
        await ts.stopService()


def terminal_args(port: int, *extra: str) -> list[str]:
    return ["--connect", f"{LOOPBACK}:{port}", "--window", f"{SIZE[0]}x{SIZE[1]}", *extra]


@pytest_twisted.ensureDeferred
async def test_the_terminal_proves_its_key_and_keeps_it_across_restarts(
    keyed_thinserve: tuple[KeyedThinserve, object],
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    keyed, server = keyed_thinserve
    certificate = server_certificate(tmp_path / "server")
    port = keyed.listen(certificate)

    terminal_id = show_id(tmp_path)  # makes the key
    fingerprint = fingerprint_of_key_file(key_file(tmp_path))
    assert terminal_id == "key-" + fingerprint[:26]
    assert stat.S_IMODE(key_file(tmp_path).stat().st_mode) == 0o600

    terminal = SoftwareTerminal(tmp_path, *terminal_args(port))
    terminals.append(terminal)
    await wait_until(lambda: keyed.connected(terminal_id), 40, f"thinserve to know {terminal_id}")
    proto = keyed.proto(terminal_id)
    assert proto.proven_key == fingerprint  # type: ignore[attr-defined]
    assert proto.conn.handshake_result.subtype == VeNCryptSubtype.X509_NONE  # type: ignore[attr-defined]
    assert keyed.shows_pairing(terminal_id)
    await first_frame(terminal)

    # The terminal trusted the server on first use and recorded its key.
    server_key = fingerprint_of_certificate(certificate[0])
    recorded = known_servers(tmp_path).read_text().splitlines()
    assert f"{LOOPBACK}:{port} sha256:{server_key}" in recorded

    # Paired by its key id, it shows the desktop, pixel for pixel.
    assert keyed.ts.hub is not None
    keyed.ts.hub.pair_code(
        keyed.ts.hub.broker.assignment(terminal_id).code, "d1", actor="admin:test"
    )
    desk = await threads.deferToThread(server.grab)  # type: ignore[attr-defined]
    await terminal.wait_for_frame(desk)

    # A restart: the same key, the same id, the same desktop at once.
    await terminal.stop()
    terminals.remove(terminal)
    await wait_until(lambda: not keyed.connected(terminal_id), 20, "the old connection's end")
    shutil.rmtree(terminal.frames)
    assert show_id(tmp_path) == terminal_id
    assert fingerprint_of_key_file(key_file(tmp_path)) == fingerprint
    again = SoftwareTerminal(tmp_path, *terminal_args(port))
    terminals.append(again)
    await again.wait_for_frame(desk)
    assert keyed.proto(terminal_id).proven_key == fingerprint  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_wrong_ca_stops_the_connection_and_the_right_one_lets_it_through(
    keyed_thinserve: tuple[KeyedThinserve, object],
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    keyed, _ = keyed_thinserve
    certificate = server_certificate(tmp_path / "server")
    port = keyed.listen(certificate)
    other = server_certificate(tmp_path / "other")
    terminal_id = show_id(tmp_path)

    wrong = SoftwareTerminal(tmp_path, *terminal_args(port, "--ca", other[0]))
    terminals.append(wrong)
    found = await wrong.child.wait_for(r"not trusted: (.*)", timeout=30)
    message = found.group(1)
    assert f"does not match --ca {other[0]}" in message
    assert fingerprint_of_certificate(certificate[0]) in message  # the key it did see
    assert not keyed.connected(terminal_id)  # never got as far as thinserve's hub
    await wrong.stop()
    terminals.remove(wrong)

    right = SoftwareTerminal(tmp_path, *terminal_args(port, "--ca", certificate[0]))
    terminals.append(right)
    await wait_until(lambda: keyed.connected(terminal_id), 40, f"thinserve to know {terminal_id}")
    assert keyed.proto(terminal_id).proven_key == fingerprint_of_key_file(key_file(tmp_path))  # type: ignore[attr-defined]
    assert keyed.shows_pairing(terminal_id)
    await first_frame(right)
    assert not known_servers(tmp_path).exists()  # with --ca nothing is trusted on first use


@pytest_twisted.ensureDeferred
async def test_a_changed_server_key_is_refused_until_its_line_is_deleted(
    keyed_thinserve: tuple[KeyedThinserve, object],
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    keyed, _ = keyed_thinserve
    first = server_certificate(tmp_path / "first")
    port = keyed.listen(first)
    terminal_id = show_id(tmp_path)
    terminal = SoftwareTerminal(tmp_path, *terminal_args(port))
    terminals.append(terminal)
    await wait_until(lambda: keyed.connected(terminal_id), 40, f"thinserve to know {terminal_id}")
    await first_frame(terminal)
    known = known_servers(tmp_path)
    first_line = f"{LOOPBACK}:{port} sha256:{fingerprint_of_certificate(first[0])}"
    assert first_line in known.read_text().splitlines()

    # The same address answers with another key.
    await keyed.close_port()
    keyed.proto(terminal_id).transport.abortConnection()  # type: ignore[attr-defined]
    await wait_until(lambda: not keyed.connected(terminal_id), 20, "the connection's end")
    second = server_certificate(tmp_path / "second")
    keyed.listen(second, port)
    found = await terminal.child.wait_for(r"not trusted: (.*)", timeout=30)
    message = found.group(1)
    assert f"the key of server {LOOPBACK}:{port} is not the one known" in message
    assert f"delete the line for {LOOPBACK}:{port} in {known}" in message
    assert fingerprint_of_certificate(second[0]) in message
    assert not keyed.connected(terminal_id)
    assert first_line in known.read_text().splitlines()  # unchanged

    # What the administrator does once the new key is known to be right.
    kept = [line for line in known.read_text().splitlines() if line != first_line]
    known.write_text("".join(f"{line}\n" for line in kept))
    await wait_until(lambda: keyed.connected(terminal_id), 60, "the terminal to trust the new key")
    second_line = f"{LOOPBACK}:{port} sha256:{fingerprint_of_certificate(second[0])}"
    assert second_line in known.read_text().splitlines()


@pytest_twisted.ensureDeferred
async def test_a_listening_terminal_proves_its_key_and_pins_the_server_that_dials_it(
    keyed_thinserve: tuple[KeyedThinserve, object],
    tmp_path: Path,
    terminals: list[SoftwareTerminal],  # noqa: F811 (the fixture)
) -> None:
    keyed, _ = keyed_thinserve
    first = server_certificate(tmp_path / "first")
    terminal_id = show_id(tmp_path)
    window = f"{SIZE[0]}x{SIZE[1]}"
    terminal = SoftwareTerminal(
        tmp_path, "--interfaces", LOOPBACK, "--port", "0", "--window", window
    )
    terminals.append(terminal)
    port = await terminal.port()

    # thinserve dials; the terminal is still the TLS client, and proves its key.
    await keyed.dial(first, port)
    await wait_until(lambda: keyed.connected(terminal_id), 40, f"thinserve to know {terminal_id}")
    proto = keyed.proto(terminal_id)
    assert proto.proven_key == fingerprint_of_key_file(key_file(tmp_path))  # type: ignore[attr-defined]
    await first_frame(terminal)
    # A server that dials in is known by the name in its certificate.
    known = known_servers(tmp_path)
    line = f"thinserve.test sha256:{fingerprint_of_certificate(first[0])}"
    assert line in known.read_text().splitlines()

    # Another key under that name is refused.
    proto.transport.abortConnection()  # type: ignore[attr-defined]
    await wait_until(lambda: not keyed.connected(terminal_id), 20, "the connection's end")
    await keyed.dial(server_certificate(tmp_path / "second"), port)
    found = await terminal.child.wait_for(r"not trusted: (.*)", timeout=30)
    assert f"delete the line for thinserve.test in {known}" in found.group(1)
    assert not keyed.connected(terminal_id)
