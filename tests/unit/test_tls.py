"""TLS contexts from thinserve.tls, run as real handshakes over memory BIOs,
and the RFB handshake carried through them."""

from __future__ import annotations

import base64
import ipaddress
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from protocols.rfb.handshake import (
    AuthenticationFailed,
    ClientHandshake,
    HandshakeDone,
    PlainCredentials,
    ServerHandshake,
    StartTLS,
    VncAuthResponse,
)
from protocols.rfb.security.vncauth import check_response
from thinserve import tls

HOST = "vnc.example.test"


@dataclass
class FakeTLSProtocol:
    """Stands in for Twisted's TLS protocol, which hears of failed checks."""

    failures: list[object] = field(default_factory=list)
    factory: object = field(default_factory=lambda: SimpleNamespace(wrappedFactory=None))

    def failVerification(self, reason: object) -> None:
        self.failures.append(reason)


def tls_connection(factory: object, *, server: bool, app: object = None) -> SSL.Connection:
    """An SSL.Connection over memory BIOs, made the way Twisted makes it."""
    if not server and hasattr(factory, "clientConnectionForTLS"):
        connection = factory.clientConnectionForTLS(app)
    else:
        connection = SSL.Connection(factory.getContext(), None)  # type: ignore[attr-defined]
    if server:
        connection.set_accept_state()
    else:
        connection.set_connect_state()
    return connection


def move(source: SSL.Connection, target: SSL.Connection) -> int:
    moved = 0
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        target.bio_write(data)
        moved += len(data)


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    finished: set[int] = set()
    for _ in range(20):
        for connection in (client, server):
            if id(connection) not in finished:
                try:
                    connection.do_handshake()
                    finished.add(id(connection))
                except SSL.WantReadError:
                    pass
        moved = move(client, server) + move(server, client)
        if len(finished) == 2 and not moved:
            return
    raise AssertionError("TLS handshake did not finish")


def echo(client: SSL.Connection, server: SSL.Connection) -> None:
    client.sendall(b"hello through TLS")
    move(client, server)
    assert server.recv(100) == b"hello through TLS"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("cert")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    tls.make_self_signed(cert, key, HOST)
    return cert, key


@pytest.fixture(scope="module")
def other_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("other")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    tls.make_self_signed(cert, key, HOST)
    return cert, key


# -- anonymous ------------------------------------------------------------------


def anonymous_pair() -> tuple[SSL.Connection, SSL.Connection]:
    client = tls_connection(tls.client_context_factory(True), server=False)
    server = tls_connection(tls.server_context_factory(True), server=True)
    return client, server


def test_anonymous_handshake_is_tls_1_2_without_certificates() -> None:
    client, server = anonymous_pair()
    handshake(client, server)
    assert client.get_protocol_version_name() == "TLSv1.2"
    assert client.get_cipher_name() in {"ADH-AES256-GCM-SHA384", "ADH-AES128-GCM-SHA256"}
    assert client.get_peer_certificate() is None
    echo(client, server)


@pytest.mark.parametrize(
    ("ciphers", "expected"),
    [(b"AECDH+AES:@SECLEVEL=0", "AECDH-"), (b"ADH+AES:!AESGCM:@SECLEVEL=0", "ADH-")],
)
def test_anonymous_server_speaks_ecdh_and_finite_field_dh(ciphers: bytes, expected: str) -> None:
    # Viewers differ: GnuTLS ones often ask for anonymous ECDH, others only DH.
    factory = tls.client_context_factory(True)
    factory.getContext().set_cipher_list(ciphers)  # type: ignore[attr-defined]
    client = tls_connection(factory, server=False)
    server = tls_connection(tls.server_context_factory(True), server=True)
    handshake(client, server)
    assert client.get_cipher_name().startswith(expected)
    echo(client, server)


def test_anonymous_client_cannot_talk_to_an_x509_server(certificate: tuple[str, str]) -> None:
    client = tls_connection(tls.client_context_factory(True), server=False)
    server = tls_connection(tls.server_context_factory(False, *certificate), server=True)
    with pytest.raises(SSL.Error):
        handshake(client, server)


def test_ffdhe2048_constant_is_the_rfc_7919_group() -> None:
    # RFC 7919: p = 2^2048 - 2^1984 + (floor(2^1918 * e) + 560316) * 2^64 - 1, g = 2.
    scale = 1 << (1918 + 64)
    e_scaled, term, k = 0, scale, 0
    while term:
        e_scaled += term
        k += 1
        term //= k
    p = (1 << 2048) - (1 << 1984) + ((e_scaled >> 64) + 560316) * (1 << 64) - 1
    assert der_integers(tls.FFDHE2048_PEM) == [p, 2]


def der_integers(pem: bytes) -> list[int]:
    """The INTEGERs of a PEM DHparams SEQUENCE (PKCS #3), read by hand."""
    der = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    values, offset = [], 0
    _, offset = der_header(der, offset)  # the SEQUENCE
    while offset < len(der):
        length, offset = der_header(der, offset)
        values.append(int.from_bytes(der[offset : offset + length], "big"))
        offset += length
    return values


def der_header(der: bytes, offset: int) -> tuple[int, int]:
    """Skip a tag and read a length; return (length, offset of the contents)."""
    length = der[offset + 1]
    offset += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[offset : offset + size], "big")
        offset += size
    return length, offset


# -- X.509 ----------------------------------------------------------------------


def x509_pair(
    certificate: tuple[str, str], ca_file: str, hostname: str | None
) -> tuple[SSL.Connection, SSL.Connection, FakeTLSProtocol]:
    app = FakeTLSProtocol()
    factory = tls.client_context_factory(False, ca_file=ca_file, verify_hostname=hostname)
    client = tls_connection(factory, server=False, app=app)
    server = tls_connection(tls.server_context_factory(False, *certificate), server=True)
    return client, server, app


@pytest.mark.parametrize("hostname", [HOST, None])
def test_x509_handshake_verifies_the_certificate(
    certificate: tuple[str, str], hostname: str | None
) -> None:
    client, server, app = x509_pair(certificate, certificate[0], hostname)
    handshake(client, server)
    assert app.failures == []
    # The server stops at TLS 1.2 (see server_context_factory).
    assert client.get_protocol_version_name() == "TLSv1.2"
    peer = client.get_peer_certificate()
    assert peer is not None
    names = peer.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert names[0].value == HOST
    echo(client, server)


def test_x509_rejects_the_wrong_hostname(certificate: tuple[str, str]) -> None:
    client, server, app = x509_pair(certificate, certificate[0], "elsewhere.test")
    with pytest.raises(SSL.Error):
        handshake(client, server)
    assert len(app.failures) == 1


def test_x509_rejects_an_untrusted_certificate(
    certificate: tuple[str, str], other_certificate: tuple[str, str]
) -> None:
    client, server, _ = x509_pair(certificate, other_certificate[0], None)
    with pytest.raises(SSL.Error):
        handshake(client, server)


def test_x509_server_needs_a_certificate() -> None:
    with pytest.raises(ValueError):
        tls.server_context_factory(False)


def test_make_self_signed_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    tls.make_self_signed(str(cert), str(key), "192.0.2.7")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = x509.load_pem_x509_certificate(cert.read_bytes())
    names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.7")]
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert private.public_key().public_numbers() == loaded.public_key().public_numbers()  # type: ignore[union-attr]


# -- the RFB handshake through real TLS -------------------------------------------


class Side:
    """One end of a connection: a handshake object, TLS once StartTLS says so."""

    def __init__(
        self,
        hs: ServerHandshake | ClientHandshake,
        make_tls: Callable[[bool], SSL.Connection],
        decide: Callable[[object], bool | None],
    ) -> None:
        self.hs = hs
        self.make_tls = make_tls
        self.decide = decide
        self.tls: SSL.Connection | None = None
        self.tls_ready = False
        self.pending = bytearray()  # plaintext waiting for the TLS handshake
        self.wire = bytearray()  # bytes for the peer
        self.events: list[object] = []

    def receive(self, data: bytes) -> None:
        if self.tls is None:
            self._handle(self.hs.receive_data(data))
            return
        self.tls.bio_write(data)
        self._progress()
        plain = bytearray()
        while True:
            try:
                plain += self.tls.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        self._handle(self.hs.receive_data(bytes(plain)))

    def flush(self) -> None:
        data = self.hs.data_to_send()
        if self.tls is None:
            self.wire += data
        else:
            self.pending += data
            self._progress()

    def _handle(self, events: list[object]) -> None:
        self.events += events
        self.flush()
        for event in events:
            if isinstance(event, StartTLS):
                self.tls = self.make_tls(event.anonymous)
                self._progress()
                self.flush()
            elif isinstance(event, VncAuthResponse | PlainCredentials):
                assert isinstance(self.hs, ServerHandshake)
                if self.decide(event):
                    self.hs.accept_auth()
                else:
                    self.hs.reject_auth("no")
                self.flush()

    def _progress(self) -> None:
        assert self.tls is not None
        if not self.tls_ready:
            try:
                self.tls.do_handshake()
                self.tls_ready = True
            except SSL.WantReadError:
                pass
        if self.tls_ready and self.pending:
            self.tls.sendall(bytes(self.pending))
            self.pending.clear()
        move_out = bytearray()
        while True:
            try:
                move_out += self.tls.bio_read(65536)
            except SSL.WantReadError:
                break
        self.wire += move_out


def run_rfb_over_tls(
    method: int, certificate: tuple[str, str], password: str = "pa55word"
) -> tuple[Side, Side, bytes]:
    def server_tls(anonymous: bool) -> SSL.Connection:
        return tls_connection(tls.server_context_factory(anonymous, *certificate), server=True)

    def client_tls(anonymous: bool) -> SSL.Connection:
        factory = tls.client_context_factory(
            anonymous, ca_file=certificate[0], verify_hostname=HOST
        )
        return tls_connection(factory, server=False, app=FakeTLSProtocol())

    def decide(event: object) -> bool:
        if isinstance(event, VncAuthResponse):
            return check_response("pa55word", event.challenge, event.response)
        assert isinstance(event, PlainCredentials)
        return (event.username, event.password) == ("carol", "pa55word")

    server = Side(ServerHandshake([method]), server_tls, decide)
    client = Side(
        ClientHandshake(password=password, username="carol", methods=[method]),
        client_tls,
        decide,
    )
    server.flush()
    seen = bytearray()
    for _ in range(30):
        to_client, to_server = bytes(server.wire), bytes(client.wire)
        server.wire.clear()
        client.wire.clear()
        seen += to_client + to_server
        if not to_client and not to_server:
            break
        if to_client:
            client.receive(to_client)
        if to_server:
            server.receive(to_server)
    return server, client, bytes(seen)


@pytest.mark.parametrize(
    "method",
    [
        VeNCryptSubtype.PLAIN,
        VeNCryptSubtype.TLS_NONE,
        VeNCryptSubtype.TLS_VNC,
        VeNCryptSubtype.TLS_PLAIN,
        VeNCryptSubtype.X509_NONE,
        VeNCryptSubtype.X509_VNC,
        VeNCryptSubtype.X509_PLAIN,
    ],
)
def test_rfb_handshake_through_real_tls(method: int, certificate: tuple[str, str]) -> None:
    server, client, wire = run_rfb_over_tls(method, certificate)
    plain = method in (VeNCryptSubtype.PLAIN, VeNCryptSubtype.TLS_PLAIN, VeNCryptSubtype.X509_PLAIN)
    expected = HandshakeDone(
        server.hs.version,  # type: ignore[arg-type]
        SecurityType.VENCRYPT,
        method,
        "carol" if plain else None,
    )
    assert server.hs.result == client.hs.result == expected
    if method == VeNCryptSubtype.PLAIN:
        # No TLS at all: the credentials are there to see, as the name says.
        assert server.tls is None and client.tls is None
        assert b"carol" in wire and b"pa55word" in wire
    else:
        assert server.tls_ready and client.tls_ready
        assert b"pa55word" not in wire and b"carol" not in wire


def test_wrong_password_through_tls_fails_cleanly(certificate: tuple[str, str]) -> None:
    with pytest.raises(AuthenticationFailed) as failed:
        run_rfb_over_tls(VeNCryptSubtype.X509_PLAIN, certificate, password="guess")
    assert failed.value.server_reason == "no"
