"""The software terminal's key, its server pins, and the TLS that carries both.

Real files in a temporary directory, real key generation, and real TLS
handshakes between thinserve's server context and the terminal's client
context over memory BIOs.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from clients.terminal.app import terminal_methods
from clients.terminal.identity import (
    KeyFileError,
    TerminalKey,
    default_key_path,
    load_or_create_key,
    named_key_path,
)
from clients.terminal.options import parse_args
from clients.terminal.trust import (
    KnownServers,
    PinnedCA,
    TrustOnFirstUse,
    certificate_name,
    server_name,
)
from protocols.identity import certificate_fingerprint
from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import ClientHandshake, ServerHandshake, StartTLS, VncAuthResponse
from thinserve import tls
from thinserve.tls import CheckedClientContext, ServerRefused


def independent_fingerprint(key_file: Path) -> str:
    """SHA-256 of the public key's SubjectPublicKeyInfo, base32, lower case, unpadded."""
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b32encode(hashlib.sha256(spki).digest()).decode().rstrip("=").lower()


# -- the key file --------------------------------------------------------------------------
def test_the_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "config" / "thinserve-terminal" / "key.pem"
    first = TerminalKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert first.fingerprint == independent_fingerprint(path)
    assert first.terminal_id == "key-" + first.fingerprint[:26]
    again = TerminalKey.load_or_create(path)
    assert (again.fingerprint, again.terminal_id) == (first.fingerprint, first.terminal_id)
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]  # no temporary left


def _fingerprint_in_child(path: str, start: multiprocessing.synchronize.Event) -> str:
    start.wait()
    return TerminalKey.load_or_create(Path(path)).fingerprint


def test_terminals_starting_at_once_keep_the_same_key(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Event()
        with context.Pool(6) as pool:
            results = pool.starmap_async(_fingerprint_in_child, [(str(path), start)] * 6)
            start.set()
            fingerprints = results.get(timeout=60)
    assert len(set(fingerprints)) == 1
    assert fingerprints[0] == independent_fingerprint(path)


def test_an_unusable_key_file_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="move it away") as caught:
        load_or_create_key(path)
    assert str(path) in str(caught.value)
    assert path.read_text() == "not a key\n"
    path.write_bytes(os.urandom(70 * 1024))
    with pytest.raises(KeyFileError, match="larger than"):
        load_or_create_key(path)


def test_the_client_certificate_carries_the_key_and_names_the_terminal(tmp_path: Path) -> None:
    key = TerminalKey.load_or_create(tmp_path / "key.pem")
    identity = key.client_certificate()
    certificate = identity.certificate
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == key.terminal_id and certificate.issuer == certificate.subject
    assert certificate.public_key() == key.private_key.public_key()
    certificate.verify_directly_issued_by(certificate)  # self-signed
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in usage
    assert key.client_certificate().certificate.serial_number != certificate.serial_number


def test_key_places_and_options(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert default_key_path(environ) == tmp_path / "thinserve-terminal" / "key.pem"
    assert named_key_path("Lab-3", environ) == tmp_path / "thinserve-terminal" / "key-lab-3.pem"
    with pytest.raises(ValueError):
        named_key_path("../x", environ)
    options = parse_args(["--id", "Lab-3", "--ca", "ca.pem"])
    assert (options.id_name, options.ca_file, options.key_file) == ("lab-3", "ca.pem", None)
    assert parse_args(["--ca-file", "ca.pem"]).ca_file == "ca.pem"  # the older spelling
    assert parse_args(["--key-file", "/k/t.pem"]).key_file == Path("/k/t.pem")
    assert parse_args(["--id-file", "/k/id"]).key_file == Path("/k/key.pem")  # beside it
    with pytest.raises(SystemExit):
        parse_args(["--id", "a", "--key-file", "/k/t.pem"])


def test_two_names_two_terminals(tmp_path: Path) -> None:
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    one = TerminalKey.load_or_create(named_key_path("one", environ), "one")
    two = TerminalKey.load_or_create(named_key_path("two", environ), "two")
    assert one.terminal_id != two.terminal_id
    assert one.shown_id == f"{one.terminal_id} (one)"
    assert TerminalKey.load_or_create(named_key_path("ONE", environ)).fingerprint == (
        one.fingerprint
    )


# -- known_servers ---------------------------------------------------------------------------
FP_A = "a" * 52
FP_B = "b" * 52


def test_known_servers_records_once_privately_and_reads_edits(tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "dir" / "known_servers")
    assert known.get("h:5900") is None and known.entries() == {}
    known.add("H:5900", FP_A)
    assert known.get("h:5900") == FP_A == known.get("H:5900")
    assert stat.S_IMODE(known.path.stat().st_mode) == 0o600
    text = known.path.read_text()
    assert text.startswith("#") and "h:5900 sha256:" + FP_A in text
    known.add("h:5900", FP_B)  # already known: unchanged
    assert known.get("h:5900") == FP_A
    # Edits by hand: other names, a name with spaces, a fingerprint without
    # its prefix, a line that does not parse, a second line for one name.
    with known.path.open("a") as handle:
        handle.write("lab server " + FP_B.upper() + "\n")
        handle.write("garbage\n")
        handle.write("h:5900 sha256:" + FP_B + "\n")
    assert known.entries() == {"h:5900": FP_A, "lab server": FP_B}
    known.add("[::1]:5900", FP_B)
    lines = known.path.read_text().splitlines()
    assert "garbage" in lines and lines[-1] == "[::1]:5900 sha256:" + FP_B  # kept, appended
    with pytest.raises(ValueError):
        known.add("two\nlines", FP_A)
    known.path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(OSError, match="larger than"):
        known.get("h:5900")


def test_server_names() -> None:
    assert server_name("ThinServe.LAN", 5900) == "thinserve.lan:5900"
    assert server_name("::1", 5901) == "[::1]:5901"
    key = ec.generate_private_key(ec.SECP256R1())
    assert certificate_name(certificate(key, "Lab\nServer  1")) == "lab?server 1"
    assert certificate_name(certificate(key, None, san="Thin.example")) == "thin.example"
    assert certificate_name(certificate(key, None)) == "unnamed server"


def certificate(
    key: ec.EllipticCurvePrivateKey,
    common_name: str | None,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None = None,
    san: str | None = None,
    ca: bool = False,
) -> x509.Certificate:
    attributes = (
        [] if common_name is None else [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )
    name = x509.Name(attributes)
    issuer_name, signer = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), False)
    return builder.sign(signer, hashes.SHA256())


# -- TLS: the terminal's certificate, the server's check ------------------------------------
def server_files(folder: Path, name: str = "server") -> tuple[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = str(folder / f"{name}.pem"), str(folder / f"{name}-key.pem")
    tls.make_self_signed(cert, key, "thinserve.test")
    return cert, key


def move(source: SSL.Connection, target: SSL.Connection) -> int:
    moved = 0
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return moved
        target.bio_write(data)
        moved += len(data)


def handshake(
    client_context: CheckedClientContext, server_cert: tuple[str, str]
) -> tuple[SSL.Connection, SSL.Connection]:
    """A real TLS handshake over memory BIOs; SSL.Error if either side fails it."""
    server_factory = tls.server_context_factory(False, *server_cert)
    server = SSL.Connection(server_factory.getContext(), None)  # type: ignore[attr-defined]
    server.set_accept_state()
    client = SSL.Connection(client_context.getContext(), None)
    client.set_connect_state()
    done: set[int] = set()
    for _ in range(20):
        for connection in (client, server):
            if id(connection) not in done:
                try:
                    connection.do_handshake()
                    done.add(id(connection))
                except SSL.WantReadError:
                    pass
        moved = move(client, server) + move(server, client)
        if len(done) == 2 and not moved:
            return client, server
    raise AssertionError("the TLS handshake did not finish")


def test_tofu_records_the_server_then_refuses_another_key(tmp_path: Path) -> None:
    terminal = TerminalKey.load_or_create(tmp_path / "key.pem")
    known = KnownServers(tmp_path / "known_servers")
    first_server = server_files(tmp_path / "one")

    context = CheckedClientContext(
        TrustOnFirstUse(known, "127.0.0.1:5900"), None, terminal.client_certificate()
    )
    client, server = handshake(context, first_server)
    # The server got the terminal's certificate: its key is the terminal's.
    seen = server.get_peer_certificate(as_cryptography=True)
    assert seen is not None and seen.public_key() == terminal.private_key.public_key()
    peer = client.get_peer_certificate(as_cryptography=True)
    assert known.get("127.0.0.1:5900") is None  # recorded only once the handshake is done
    context.handshake_done(peer)
    server_key = x509.load_pem_x509_certificate(Path(first_server[0]).read_bytes())
    assert known.get("127.0.0.1:5900") == certificate_fingerprint(server_key)

    # The same server again: trusted.  Another key under the same name: refused.
    again = CheckedClientContext(TrustOnFirstUse(known, "127.0.0.1:5900"))
    handshake(again, first_server)
    impostor = server_files(tmp_path / "two")
    check = TrustOnFirstUse(known, "127.0.0.1:5900")
    refused = CheckedClientContext(check, None, terminal.client_certificate())
    with pytest.raises(SSL.Error):
        handshake(refused, impostor)
    assert refused.refusal is not None and str(known.path) in refused.refusal
    assert "127.0.0.1:5900" in refused.refusal
    assert check.refusal is not None and str(known.path) in check.refusal
    with pytest.raises(ServerRefused):
        refused.handshake_done(None)
    assert known.get("127.0.0.1:5900") == certificate_fingerprint(server_key)  # unchanged

    # Deleting the line is how an administrator accepts a new key.
    known.path.write_text("")
    accepted = CheckedClientContext(TrustOnFirstUse(known, "127.0.0.1:5900"))
    client, _ = handshake(accepted, impostor)
    accepted.handshake_done(client.get_peer_certificate(as_cryptography=True))
    assert known.get("127.0.0.1:5900") is not None
    assert known.get("127.0.0.1:5900") != certificate_fingerprint(server_key)


def test_a_server_that_dials_in_is_known_by_its_certificate_name(tmp_path: Path) -> None:
    known = KnownServers(tmp_path / "known_servers")
    context = CheckedClientContext(TrustOnFirstUse(known, None))
    client, _ = handshake(context, server_files(tmp_path / "one"))
    context.handshake_done(client.get_peer_certificate(as_cryptography=True))
    assert list(known.entries()) == ["thinserve.test"]
    with pytest.raises(SSL.Error):
        handshake(CheckedClientContext(TrustOnFirstUse(known, None)), server_files(tmp_path / "b"))


def test_ca_pins_the_servers_own_certificate_or_its_ca(tmp_path: Path) -> None:
    own = server_files(tmp_path / "own")
    other = server_files(tmp_path / "other")
    client, _ = handshake(CheckedClientContext(PinnedCA(own[0]), own[0]), own)
    wrong = CheckedClientContext(PinnedCA(other[0]), other[0])
    with pytest.raises(SSL.Error):
        handshake(wrong, own)
    assert wrong.refusal is not None and other[0] in wrong.refusal and "--ca" in wrong.refusal

    # A CA's certificate in the file: servers it signed are trusted, others not.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate(ca_key, "Test CA", ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificate(server_key, "thinserve.test", issuer=(ca_cert.subject, ca_key))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    signed = (str(tmp_path / "leaf.pem"), str(tmp_path / "leaf-key.pem"))
    Path(signed[0]).write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    Path(signed[1]).write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    by_ca = CheckedClientContext(PinnedCA(str(ca_file)), str(ca_file))
    client, _ = handshake(by_ca, signed)
    by_ca.handshake_done(client.get_peer_certificate(as_cryptography=True))
    not_by_ca = CheckedClientContext(PinnedCA(str(ca_file)), str(ca_file))
    with pytest.raises(SSL.Error):
        handshake(not_by_ca, own)


NONE, VNC_AUTH = SecurityType.NONE, SecurityType.VNC_AUTH
X509_NONE, X509_VNC = VeNCryptSubtype.X509_NONE, VeNCryptSubtype.X509_VNC
TLS_NONE = VeNCryptSubtype.TLS_NONE


def test_the_terminal_methods() -> None:
    assert terminal_methods(False, fallback=False) == (X509_NONE,)
    assert terminal_methods(True, fallback=False) == (X509_VNC, X509_NONE)
    assert terminal_methods(False, fallback=True) == (X509_NONE, NONE)
    assert terminal_methods(True, fallback=True) == (X509_VNC, X509_NONE, VNC_AUTH, NONE)


def negotiate(offered: tuple[int, ...], password: bool, fallback: bool) -> str:
    """Run the real handshake roles up to the method: which one the terminal took."""
    server = ServerHandshake(offered)
    client = ClientHandshake(
        methods=terminal_methods(password, fallback), password="pw" if password else None
    )
    for _ in range(10):
        try:
            events = client.receive_data(server.data_to_send())
        except ProtocolError as exc:
            return f"refused: {exc.reason}"
        for event in events:
            if isinstance(event, StartTLS):
                return "anonymous TLS" if event.anonymous else "X509"
        if client.done:
            assert client.result is not None
            return SecurityType(client.result.security_type).name
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, VncAuthResponse):
                server.accept_auth()
    raise AssertionError("the handshake stalled")


@pytest.mark.parametrize("password", [False, True])
def test_a_server_with_x509_always_gets_x509(password: bool) -> None:
    plain = VNC_AUTH if password else NONE
    for fallback in (False, True):
        for offered in [(plain, X509_NONE), (X509_NONE, plain), (X509_NONE,)]:
            assert negotiate(offered, password, fallback) == "X509", offered
        if password:
            assert negotiate((plain, X509_VNC), password, fallback) == "X509"
        # Anonymous TLS only: no server to check, so no connection, and no None either.
        chosen = negotiate((plain, TLS_NONE), password, fallback)
        assert chosen.startswith("refused") and "VeNCrypt" in chosen
    # Without VeNCrypt at all: only for a server not pinned yet.
    assert negotiate((plain,), password, fallback=True) == plain.name
    assert negotiate((plain,), password, fallback=False).startswith("refused")
