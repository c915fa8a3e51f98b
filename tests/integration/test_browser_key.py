"""The browser terminal's key proof (WebSocket subprotocol ``thinserve-key.v1``).

The server side is driven over a raw WebSocket on loopback, with proofs made
here with the ``cryptography`` package; the page's side runs in headless
Chromium against a real thinserve.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import shutil
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from twisted.internet.interfaces import IListeningPort

from protocols.rfb.client import ClientConnection, ServerInitReceived
from tests.support.aio import as_deferred
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from tests.support.rawpeer import RawPeer, connect_raw
from tests.support.server import start_thinserve
from tests.support.waiting import wait_until
from tests.support.webserve import listen
from tests.support.websocket import (
    WebSocketStream,
    client_frame,
    head_complete,
    server_frames,
    split_response,
    upgrade_request,
)
from tests.unit.content import desktop_frame
from thinserve.broker import BrokerConfig
from thinserve.relay.session import TerminalSession
from thinserve.relay.source import Source
from thinserve.rfbserver import RFBServerFactory, RFBServerProtocol, ServerOptions
from thinserve.web import WebOptions, WebSocketOptions, terminal_site

pytestmark = pytest.mark.integration

OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE = 0x1, 0x2, 0x8
CONTEXT = b"thinserve-terminal-key-proof-v1\x00"  # written out here, not imported
RFB_VERSION = b"RFB 003.008\n"
PROOF_TIMEOUT = 0.5


# -- proofs made with `cryptography` -------------------------------------------------------
def spki_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint_of(key: ec.EllipticCurvePrivateKey) -> str:
    digest = hashlib.sha256(spki_of(key)).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()


def proof(key: ec.EllipticCurvePrivateKey, nonce: bytes) -> bytes:
    """What a page sends: u16 length, SPKI DER, raw r||s signature."""
    der = key.sign(CONTEXT + nonce, ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    spki = spki_of(key)
    return struct.pack("!H", len(spki)) + spki + r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- a server that records what each RFB protocol knew when it started ----------------------
@dataclass
class Server:
    port: IListeningPort
    sessions: list[TerminalSession]
    keys_at_start: list[str | None]  # proven_key when each RFB protocol wrote its first byte

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}"


async def serve(timeout: float = PROOF_TIMEOUT) -> Server:
    source = Source(desktop_frame(64, 48), name="test desktop")
    sessions: list[TerminalSession] = []
    keys_at_start: list[str | None] = []

    def make_session() -> TerminalSession:
        sessions.append(TerminalSession(on_attach=lambda s: source))
        return sessions[-1]

    class Factory(RFBServerFactory):
        def buildProtocol(self, addr: object) -> RFBServerProtocol:
            proto = super().buildProtocol(addr)
            made = proto.connectionMade

            def connection_made() -> None:
                keys_at_start.append(proto.proven_key)
                made()

            proto.connectionMade = connection_made  # type: ignore[method-assign]
            return proto

    options = WebOptions(websocket=WebSocketOptions(key_proof_timeout=timeout))
    site = terminal_site(Factory(ServerOptions(), make_session), options)
    return Server(await listen(site), sessions, keys_at_start)


def frames_of(peer: RawPeer) -> list[tuple[int, bytes]]:
    return server_frames(bytes(peer.received).partition(b"\r\n\r\n")[2])


def close_code(peer: RawPeer) -> int | None:
    for opcode, payload in frames_of(peer):
        if opcode == OPCODE_CLOSE and len(payload) >= 2:
            return int.from_bytes(payload[:2], "big")
    return None


async def open_keyed(
    server: Server, protocols: str = "thinserve-key.v1, binary"
) -> tuple[RawPeer, bytes]:
    """A WebSocket that asked for the key proof: (peer, the server's nonce)."""
    number = server.port.getHost().port
    peer = await connect_raw(number)
    peer.transport.write(upgrade_request(number, server.origin, protocols))
    status, headers, _ = split_response(await peer.wait_for(head_complete))
    assert status == 101
    assert headers["sec-websocket-protocol"] == "thinserve-key.v1"
    await peer.wait_for(lambda _: len(frames_of(peer)) >= 1)
    opcode, nonce = frames_of(peer)[0]
    assert opcode == OPCODE_BINARY and len(nonce) == 32
    return peer, nonce


# -- the server's side ---------------------------------------------------------------------
@pytest.mark.parametrize("protocols", ["thinserve-key.v1, binary", "binary, thinserve-key.v1"])
@pytest_twisted.ensureDeferred
async def test_a_good_proof_sets_the_key_before_rfb_starts(protocols: str) -> None:
    server = await serve()
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        peer, nonce = await open_keyed(server, protocols)
        assert server.sessions == []  # no terminal before the proof
        peer.transport.write(client_frame(OPCODE_BINARY, proof(key, nonce)))
        await peer.wait_for(lambda _: len(frames_of(peer)) >= 2)
        assert frames_of(peer)[1] == (OPCODE_BINARY, RFB_VERSION)
        assert server.keys_at_start == [fingerprint_of(key)]
        # RFB goes on as usual; the session's protocol carries the key.
        stream = WebSocketStream(peer)
        stream.frames_seen = 1  # the nonce
        client = ClientConnection()
        events: list[object] = []
        while not any(isinstance(e, ServerInitReceived) for e in events):
            for _, payload in await stream.next_frames():
                events += client.receive_data(payload)
            stream.send(client.data_to_send())
        assert server.sessions[0].proto.proven_key == fingerprint_of(key)
        peer.transport.loseConnection()
    finally:
        await server.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_two_connections_get_different_nonces() -> None:
    server = await serve()
    try:
        (first, one), (second, two) = await open_keyed(server), await open_keyed(server)
        assert one != two
        first.transport.loseConnection()
        second.transport.loseConnection()
    finally:
        await server.port.stopListening()


def bad_signature(nonce: bytes) -> bytes:
    good = bytearray(proof(ec.generate_private_key(ec.SECP256R1()), nonce))
    good[-1] ^= 0x01
    return client_frame(OPCODE_BINARY, bytes(good))


def wrong_nonce(nonce: bytes) -> bytes:
    other = bytes(b ^ 0xFF for b in nonce)
    return client_frame(OPCODE_BINARY, proof(ec.generate_private_key(ec.SECP256R1()), other))


def another_curve(nonce: bytes) -> bytes:
    spki = spki_of(ec.generate_private_key(ec.SECP384R1()))  # P-384: not what a page makes
    return client_frame(OPCODE_BINARY, struct.pack("!H", len(spki)) + spki + bytes(64))


def length_mismatch(nonce: bytes) -> bytes:
    good = proof(ec.generate_private_key(ec.SECP256R1()), nonce)
    return client_frame(OPCODE_BINARY, good + b"RFB 003.008\n")


def oversized_frame(nonce: bytes) -> bytes:
    return client_frame(OPCODE_BINARY, b"", declared=50_000)  # header only: never sent


def oversized_in_fragments(nonce: bytes) -> bytes:
    first = bytearray(client_frame(OPCODE_BINARY, b"\0" * 400))
    first[0] &= 0x7F  # not the final fragment
    return bytes(first) + client_frame(0x0, b"\0" * 400)


def as_text(nonce: bytes) -> bytes:
    good = proof(ec.generate_private_key(ec.SECP256R1()), nonce)
    return client_frame(OPCODE_TEXT, base64.b64encode(good))


@pytest.mark.parametrize(
    "answer",
    [
        bad_signature,
        wrong_nonce,
        another_curve,
        length_mismatch,
        oversized_frame,
        oversized_in_fragments,
        as_text,
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_proof_closes_with_1008_before_any_rfb(
    answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await serve(timeout=30)
    try:
        with caplog.at_level(logging.WARNING, logger="thinserve.web.websocket"):
            peer, nonce = await open_keyed(server)
            port = peer.transport.getHost().port
            peer.transport.write(answer(nonce))
            await peer.wait_for(lambda _: close_code(peer) is not None, timeout=2)
            data = await peer.wait_closed(timeout=5)
        assert close_code(peer) == 1008
        assert RFB_VERSION not in data
        assert server.sessions == [] and server.keys_at_start == []
        refusals = [r.getMessage() for r in caplog.records if "key proof refused" in r.getMessage()]
        assert len(refusals) == 1 and f":{port}" in refusals[0], refusals
    finally:
        await server.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_no_proof_in_time_closes_with_1008(caplog: pytest.LogCaptureFixture) -> None:
    server = await serve(timeout=PROOF_TIMEOUT)
    try:
        with caplog.at_level(logging.WARNING, logger="thinserve.web.websocket"):
            peer, _ = await open_keyed(server)
            asked = time.monotonic()
            await peer.wait_for(lambda _: close_code(peer) is not None, timeout=PROOF_TIMEOUT + 2)
            waited = time.monotonic() - asked
            data = await peer.wait_closed(timeout=5)
        assert close_code(peer) == 1008
        assert waited >= PROOF_TIMEOUT * 0.8
        assert RFB_VERSION not in data and server.sessions == []
        assert any("no key proof within" in r.getMessage() for r in caplog.records)
    finally:
        await server.port.stopListening()


# -- the page, in Chromium, against a real thinserve -----------------------------------------
ID_PATTERN = re.compile(r"key-[a-z2-7]{26}")

KEY_RECORD_JS = """
() => new Promise((resolve, reject) => {
  const opening = indexedDB.open("thinserve-terminal");
  opening.onerror = () => reject(opening.error);
  opening.onsuccess = () => {
    const db = opening.result;
    const store = db.transaction("key").objectStore("key");
    const all = store.getAll();
    all.onsuccess = async () => {
      const pair = all.result[0];
      let exported = "exported";
      try { await crypto.subtle.exportKey("pkcs8", pair.privateKey); }
      catch (error) { exported = error.name; }
      resolve({stores: [...db.objectStoreNames], records: all.result.length,
               extractable: pair.privateKey.extractable, exported});
      db.close();
    };
  };
})
"""


@asynccontextmanager
async def chromium(profile: Path, *extra_args: str) -> AsyncIterator[Any]:
    """A page in headless Chromium with the profile directory given."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=CHROMIUM_ARGS + list(extra_args),
            viewport={"width": 900, "height": 700},
        )
        try:
            yield context.pages[0] if context.pages else await context.new_page()
        finally:
            await context.close()


def proven_keys(ts: Any) -> list[str | None]:
    """The proven key of every terminal connected to thinserve right now."""
    return [
        t.session.proto.proven_key for t in ts.hub.terminals.values() if t.session.proto is not None
    ]


async def connected_id(page: Any, url: str) -> str:
    await page.goto(url)
    await page.wait_for_selector("body[data-state=connected]", timeout=15_000)
    shown = await page.inner_text("#terminal-id")
    assert ID_PATTERN.fullmatch(shown), shown
    return shown


@pytest_twisted.ensureDeferred
async def test_the_key_survives_a_reload_and_a_new_profile_is_a_new_terminal(
    tmp_path: Path,
) -> None:
    require_browser()
    ts = await start_thinserve([], broker=BrokerConfig(), web=True)
    url = f"http://127.0.0.1:{ts.port_numbers[1]}/?resize=off"

    async def only_key(terminal: str) -> bool:
        keys = proven_keys(ts)
        return len(keys) == 1 and keys[0] is not None and f"key-{keys[0][:26]}" == terminal

    async def scenario() -> None:
        async with chromium(tmp_path / "one") as page:
            first = await connected_id(page, url)
            await wait_until(lambda: only_key(first), 10, f"{first} to be the only proven key")
            assert first in ts.hub.terminals
            session = ts.hub.terminals[first].session
            assert await page.evaluate(KEY_RECORD_JS) == {
                "stores": ["key"],
                "records": 1,
                "extractable": False,
                "exported": "InvalidAccessError",
            }
            await page.reload()
            await page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            assert await page.inner_text("#terminal-id") == first

            async def reconnected() -> bool:
                return await only_key(first) and ts.hub.terminals[first].session is not session

            await wait_until(reconnected, 10, "the reloaded page back on the same terminal")
        async with chromium(tmp_path / "two") as page:
            second = await connected_id(page, url)
            assert second != first
            await wait_until(lambda: only_key(second), 10, f"{second} to be the only proven key")
            assert second in ts.hub.terminals

    try:
        await as_deferred(scenario())
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_second_tab_takes_the_terminal_and_the_first_stays_away(tmp_path: Path) -> None:
    """Two tabs share one key, so one terminal: the newest keeps it, and the
    older one stops instead of taking it back (no reconnection ping-pong)."""
    require_browser()
    ts = await start_thinserve([], broker=BrokerConfig(), web=True)
    url = f"http://127.0.0.1:{ts.port_numbers[1]}/?resize=off"

    async def scenario() -> None:
        async with chromium(tmp_path / "tabs") as first:
            terminal = await connected_id(first, url)
            await wait_until(lambda: terminal in ts.hub.terminals, 10, f"{terminal} on thinserve")
            older = ts.hub.terminals[terminal].session
            second = await first.context.new_page()
            assert await connected_id(second, url) == terminal
            await first.wait_for_selector("body[data-state=elsewhere]", timeout=15_000)
            assert "open in another tab" in await first.inner_text("#status")
            newer = ts.hub.terminals[terminal].session
            assert newer is not older and newer.proto is not None
            assert await second.evaluate("document.body.dataset.state") == "connected"
            await first.reload()  # the person chooses this tab again: it takes over
            await first.wait_for_selector("body[data-state=connected]", timeout=15_000)
            await second.wait_for_selector("body[data-state=elsewhere]", timeout=15_000)

    try:
        await as_deferred(scenario())
    finally:
        await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_page_that_cannot_keep_a_key_connects_keyless_and_says_so(
    tmp_path: Path,
) -> None:
    """http://terminal.test is not a secure context (127.0.0.1 would be): no
    WebCrypto, so the page asks only for "binary" and tells the user."""
    require_browser()
    ts = await start_thinserve([], broker=BrokerConfig(), web=True)
    number = ts.port_numbers[1]
    rule = "--host-resolver-rules=MAP terminal.test 127.0.0.1"

    async def scenario() -> None:
        async with chromium(tmp_path / "profile", rule) as page:
            await page.goto(f"http://terminal.test:{number}/?resize=off")
            await page.wait_for_selector("body[data-state=connected]", timeout=15_000)
            assert "no terminal key: the page is not a secure context" in await page.inner_text(
                "#status"
            )
            assert await page.inner_text("#terminal-id") == ""

            async def keyless() -> bool:
                return proven_keys(ts) == [None]

            await wait_until(keyless, 10, "the page to connect without a key")
            assert not any(t.startswith("key-") for t in ts.hub.terminals)

    try:
        await as_deferred(scenario())
    finally:
        await ts.stopService()
