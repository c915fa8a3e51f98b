"""Terminal identities: keys and their proofs, what each peer is offered, how
connections are named, and the broker's handshake logins and address bindings."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils
from twisted.internet import reactor

from protocols.identity import (
    KeyProofError,
    fingerprint,
    proof_message,
    terminal_id,
    verify_key_proof,
)
from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from thinserve.broker import (
    Broker,
    BrokerConfig,
    BrokerError,
    ScreenKind,
    ShowDesktop,
    ShowScreen,
    TerminalInfo,
)
from thinserve.broker.core import LoginCheck
from thinserve.config import ConfigError, from_dict
from thinserve.hub import Hub
from thinserve.identities import IdentityRules
from thinserve.linksecurity import SecurityPolicy, ServerCertificate, https_description, is_loopback
from thinserve.secrets import SecretHasher
from thinserve.store import SqliteStore
from thinserve.terminal_ids import kind_of

CHEAP = SecretHasher(time_cost=1, memory_cost=8, parallelism=1)
X509_NONE, X509_PLAIN, X509_VNC = (
    VeNCryptSubtype.X509_NONE,
    VeNCryptSubtype.X509_PLAIN,
    VeNCryptSubtype.X509_VNC,
)


def spki_of(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def expected_id(spki: bytes) -> str:
    """The id rule, written out independently: base32 SHA-256, 26 characters."""
    digest = base64.b32encode(hashlib.sha256(spki).digest()).decode().lower()
    return "key-" + digest[:26]


def webcrypto_signature(key: ec.EllipticCurvePrivateKey, nonce: bytes) -> bytes:
    der = key.sign(b"thinserve-terminal-key-proof-v1\x00" + nonce, ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# -- keys and proofs -----------------------------------------------------------------------


def test_a_key_id_is_its_fingerprint_and_survives_a_new_certificate() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = spki_of(key)
    assert terminal_id(fingerprint(spki)) == expected_id(spki)
    assert kind_of(expected_id(spki)) == "key"
    other = ec.generate_private_key(ec.SECP256R1())
    assert terminal_id(fingerprint(spki_of(other))) != expected_id(spki)
    with pytest.raises(ValueError):
        terminal_id("not-a-fingerprint")


def test_a_browser_key_proof_verifies_only_with_its_own_nonce_and_key() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = os.urandom(32)
    signature = webcrypto_signature(key, nonce)
    assert verify_key_proof(spki_of(key), signature, nonce) == fingerprint(spki_of(key))
    assert proof_message(nonce).endswith(nonce)
    with pytest.raises(KeyProofError, match="does not verify"):
        verify_key_proof(spki_of(key), signature, os.urandom(32))  # replayed elsewhere
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyProofError, match="does not verify"):
        verify_key_proof(spki_of(stranger), signature, nonce)  # someone else's public key
    with pytest.raises(KeyProofError, match="64 bytes"):
        verify_key_proof(spki_of(key), signature[:63], nonce)
    with pytest.raises(KeyProofError, match="not a DER"):
        verify_key_proof(b"\x30\x03junk", signature, nonce)
    with pytest.raises(KeyProofError, match="over 600"):
        verify_key_proof(b"\x30" * 601, signature, nonce)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(KeyProofError, match="P-256"):
        verify_key_proof(spki_of(p384), signature, nonce)
    with pytest.raises(KeyProofError, match="nonce"):
        verify_key_proof(spki_of(key), signature, nonce[:16])


# -- what each peer is offered ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.45.6.7", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("local", True),
        ("10.1.2.3", False),
        ("192.168.1.20", False),
        ("fe80::1%eth0", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_loopback_is_told_from_the_lan(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_beyond_loopback_only_x509_subtypes_are_offered_by_default() -> None:
    policy = SecurityPolicy()
    assert policy.methods_for("127.0.0.1") == (SecurityType.NONE, X509_NONE)
    assert policy.methods_for("10.0.0.5") == (X509_NONE,)
    with_users = SecurityPolicy(logins=True)
    assert with_users.methods_for("10.0.0.5") == (X509_PLAIN, X509_NONE)
    password = SecurityPolicy(password=True, logins=True)
    assert password.methods_for("10.0.0.5") == (X509_PLAIN, X509_VNC)  # no X509None
    assert password.methods_for("::1") == (SecurityType.VNC_AUTH, X509_PLAIN, X509_VNC)
    assert SecurityPolicy(allow_none="all").methods_for("10.0.0.5") == (
        SecurityType.NONE,
        X509_NONE,
    )
    assert SecurityPolicy(allow_none="no").methods_for("127.0.0.1") == (X509_NONE,)
    for policy in (SecurityPolicy(), with_users, password, SecurityPolicy(allow_none="all")):
        offered = set(policy.methods_for("10.9.9.9")) | set(policy.methods_for("127.0.0.1"))
        assert not offered & {257, 258, 259}  # anonymous TLS: never


def test_web_listeners_beyond_loopback_become_https(tmp_path: Path) -> None:
    cert = ServerCertificate.ensure(tmp_path / "tls:dir")
    key, crt = cert.key_file.replace(":", "\\:"), cert.cert_file.replace(":", "\\:")
    assert https_description("tcp:port=5800:interface=127.0.0.1", cert) is None
    assert https_description("tcp:port=5800:interface=\\:\\:1", cert) is None
    assert https_description("unix:/run/x.sock", cert) is None
    assert https_description("tcp:port=5800", cert) == (
        f"ssl:port=5800:privateKey={key}:certKey={crt}"
    )
    assert https_description("tcp:5800:interface=10.0.0.1", cert) == (
        f"ssl:5800:interface=10.0.0.1:privateKey={key}:certKey={crt}"
    )


def test_the_server_certificate_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first = ServerCertificate.for_database(str(tmp_path / "state" / "thinserve.db"))
    again = ServerCertificate.for_database(str(tmp_path / "state" / "thinserve.db"))
    assert first == again and first.fingerprint == again.fingerprint
    assert os.stat(first.key_file).st_mode & 0o077 == 0
    with open(first.key_file, "rb") as pem:
        key = serialization.load_pem_private_key(pem.read(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert first.fingerprint == fingerprint(spki_of(key))


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({"tls_cert": "/etc/c.pem"}, "both tls_cert and tls_key"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, "absolute path"),
        ({"allow_none": "sometimes"}, "one of loopback, all, no"),
        ({"address_pairing": ["10.1.2.0/33"]}, "not a subnet"),
    ],
)
def test_link_security_config_errors_say_what_to_write(
    server: dict[str, object], message: str
) -> None:
    data = {"server": server, "desktop": [{"name": "d", "address": "127.0.0.1:5901"}]}
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_link_security_defaults_are_safe() -> None:
    config = from_dict({"desktop": [{"name": "d", "address": "127.0.0.1:5901"}]})
    assert config.allow_none == "loopback" and config.address_pairing == ()
    assert config.tls_cert is None


# -- naming connections -----------------------------------------------------------------------


class Names:
    def __init__(self, subnets: tuple[str, ...] = ()) -> None:
        self.bound: set[str] = set()
        self.live: set[str] = set()
        self.rules = IdentityRules(subnets, self.bound.__contains__, self.live.__contains__)


def test_a_proven_key_names_the_terminal_wherever_it_connects_from() -> None:
    names = Names()
    key = fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1())))
    for host in ("10.0.0.5", "192.168.7.7", "127.0.0.1"):
        found = names.rules.identify(host, key)
        assert (found.terminal_id, found.kind, found.note) == (terminal_id(key), "key", "")


def test_an_advert_s_key_must_be_proven() -> None:
    names = Names()
    key = fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1())))
    other = fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1())))
    assert names.rules.identify("10.0.0.5", key, advertised_key=key).kind == "key"
    for proven in (None, other):
        found = names.rules.identify("10.0.0.5", proven, advertised_key=key)
        assert found.kind == "connection" and found.terminal_id.startswith("viewer-10.0.0.5~")
        assert "did not prove" in found.note


def test_a_keyless_viewer_is_known_by_address_only_where_the_admin_chose() -> None:
    names = Names(subnets=("10.9.0.0/16",))
    first = names.rules.identify("10.0.0.5", None)
    second = names.rules.identify("10.0.0.5", None)
    assert first.kind == second.kind == "connection"
    assert first.terminal_id != second.terminal_id  # each connection is its own terminal
    assert kind_of(first.terminal_id) == "connection"
    names.bound.add("viewer-10.0.0.5")  # pair --by-address
    assert names.rules.identify("10.0.0.5", None).terminal_id == "viewer-10.0.0.5"
    names.live.add("viewer-10.0.0.5")  # a connection holds it: the next one does not take it
    assert names.rules.identify("10.0.0.5", None).kind == "connection"
    assert names.rules.identify("10.9.3.4", None).terminal_id == "viewer-10.9.3.4"  # subnet
    assert names.rules.identify("::ffff:10.9.3.4", None).terminal_id == "viewer-10.9.3.4"
    assert names.rules.identify("10.10.3.4", None).kind == "connection"


# -- the broker: handshake logins, connections forgotten, address bindings ---------------------


def site(config: BrokerConfig | None = None) -> Broker:
    broker = Broker(SqliteStore(), config or BrokerConfig(), hasher=CHEAP)
    for name in ("d1", "d2"):
        broker.register_desktop(name, "xvnc")
    return broker


def shows(assignment: object) -> tuple[str, bool] | None:
    if isinstance(assignment, ShowDesktop):
        return assignment.desktop, assignment.control
    return None


def check(broker: Broker, source: str, user: str, secret: str) -> str | None:
    prepared = broker.prepare_credentials(source, user, secret)
    if isinstance(prepared, str):
        return prepared
    return broker.credentials_checked(prepared.run())


def test_a_handshake_login_is_checked_limited_per_source_and_audited() -> None:
    broker = site(BrokerConfig(hot_desk=True))
    broker.add_user("alice", "right-secret", "admin", desktop="d1")
    assert check(broker, "10.0.0.9", "alice", "wrong") == "Wrong user name or password."
    for _ in range(4):
        check(broker, "10.0.0.9", "alice", "wrong")
    refused = check(broker, "10.0.0.9", "alice", "right-secret")
    assert refused is not None and refused.startswith("Too many failed attempts")
    broker.add_user("bob", "bobs-secret", "admin", desktop="d2")
    assert check(broker, "10.0.0.10", "bob", "bobs-secret") is None  # another source still works
    actions = [(e.action, e.subject) for e in broker.store.list_audit()]
    assert ("login-failed", "from 10.0.0.9") in actions
    assert ("login-refused", "from 10.0.0.9") in actions
    broker.terminal_connected("viewer-10.0.0.10~abc123", TerminalInfo())
    broker.login_verified("viewer-10.0.0.10~abc123", "bob")
    assert shows(broker.assignment("viewer-10.0.0.10~abc123")) == ("d2", True)


def test_handshake_logins_need_hot_desking_and_a_desktop() -> None:
    assert check(site(), "10.0.0.9", "alice", "x") == "User logins are not enabled on this server."
    broker = site(BrokerConfig(hot_desk=True))
    broker.add_user("carol", "her-secret", "admin")
    refused = check(broker, "10.0.0.9", "carol", "her-secret")
    assert refused is not None and "No desktop is set up for carol" in refused


def test_a_connection_s_terminal_is_forgotten_with_its_pairing() -> None:
    broker = site()
    tid = "viewer-10.0.0.5~a1b2c3"
    shown = broker.terminal_connected(tid, TerminalInfo(address="10.0.0.5"))
    assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING
    assert shown.code is not None
    broker.pair_code(shown.code, "d1", "admin")
    assert shows(broker.assignment(tid)) == ("d1", True)
    with pytest.raises(BrokerError, match="still connected"):
        broker.forget_terminal(tid, "its connection ended")
    broker.terminal_disconnected(tid)
    broker.forget_terminal(tid, "its connection ended")
    assert broker.store.get_terminal(tid) is None and broker.store.pairing_for(tid) is None
    assert broker.store.pairing_for_desktop("d1") is None  # free for the next pairing


def test_pairing_a_code_by_address_binds_the_address_and_keeps_the_connection() -> None:
    broker = site()
    tid = "viewer-10.0.0.5~a1b2c3"
    shown = broker.terminal_connected(tid, TerminalInfo(address="10.0.0.5"), connection=1)
    assert isinstance(shown, ShowScreen) and shown.code is not None
    changes = broker.pair_code(shown.code, "d1", "admin", by_address=True)
    assert broker.take_renames() == [(tid, "viewer-10.0.0.5")]
    assert [(c.terminal_id, shows(c.assignment)) for c in changes] == [
        ("viewer-10.0.0.5", ("d1", True))
    ]
    assert not broker.is_connected(tid) and broker.store.get_terminal(tid) is None
    assert broker.store.pairing_for("viewer-10.0.0.5") is not None
    assert broker.terminal_disconnected("viewer-10.0.0.5", connection=1) == []
    assert not broker.is_connected("viewer-10.0.0.5")


def test_by_address_is_refused_for_keys_and_for_an_address_already_held() -> None:
    broker = site()
    key = terminal_id(fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1()))))
    keyed = broker.terminal_connected(key, TerminalInfo())
    assert isinstance(keyed, ShowScreen) and keyed.code is not None
    with pytest.raises(BrokerError, match="not a keyless viewer"):
        broker.pair_code(keyed.code, "d1", "admin", by_address=True)
    broker.terminal_connected("viewer-10.0.0.5", TerminalInfo())
    second = broker.terminal_connected("viewer-10.0.0.5~ffffff", TerminalInfo())
    assert isinstance(second, ShowScreen) and second.code is not None
    with pytest.raises(BrokerError, match=r"from that address is 'viewer-10\.0\.0\.5' already"):
        broker.pair_code(second.code, "d1", "admin", by_address=True)
    assert broker.store.pairing_for_desktop("d1") is None


class FlakyHasher(SecretHasher):
    """Cheap Argon2 whose first verification raises, as a failing worker would."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.failures_left = 1

    def verify(self, encoded: str | None, secret: str) -> bool:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("worker lost")
        return super().verify(encoded, secret)


@pytest_twisted.ensureDeferred
async def test_a_handshake_login_check_that_fails_is_forgotten() -> None:
    broker = Broker(SqliteStore(), BrokerConfig(hot_desk=True), hasher=FlakyHasher())
    broker.register_desktop("d1", "xvnc")
    broker.add_user("alice", "right-secret", "admin", desktop="d1")
    hub = Hub(broker, {}, reactor)
    try:
        lost = await hub.check_credentials("10.0.0.9", "alice", "right-secret")
        assert lost == "The login could not be checked; try again."
        assert await hub.check_credentials("10.0.0.9", "alice", "right-secret") is None
        actions = [e.action for e in broker.store.list_audit()]
        assert "login-cancelled" in actions and "login-failed" not in actions
    finally:
        hub.stop()


def test_a_new_key_under_a_paired_terminal_s_name_is_told_why() -> None:
    """A reinstalled terminal (new key, same advertised name) is a new terminal:
    its pairing screen says the old key holds the pairing."""
    broker = site()
    hub = Hub(broker, {}, reactor)
    old = terminal_id(fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1()))))
    new = terminal_id(fingerprint(spki_of(ec.generate_private_key(ec.SECP256R1()))))
    try:
        broker.terminal_connected(old, TerminalInfo(name="Front desk"))
        broker.pair(old, "d1", "admin")
        broker.terminal_disconnected(old)
        note = hub._changed_key(new, TerminalInfo(name="Front desk"))
        assert note == (
            f"This terminal has a new key; {old} with the old key is paired with d1. "
            "Ask the administrator to pair it again."
        )
        assert hub._changed_key(new, TerminalInfo(name="Back office")) == ""
        assert hub._changed_key(old, TerminalInfo(name="Front desk")) == ""  # the same key
        shown = broker.terminal_connected(new, TerminalInfo(name="Front desk"), notice=note)
        assert isinstance(shown, ShowScreen) and shown.kind is ScreenKind.PAIRING
        assert shown.message == note  # on the terminal's own pairing screen
    finally:
        hub.stop()


def test_login_form_guesses_are_limited_per_address_across_reconnections() -> None:
    """Each connection of a keyless viewer is a terminal of its own: a guesser
    that reconnects meets the limit for its address."""
    broker = site(BrokerConfig(hot_desk=True, unknown_terminal="login"))
    broker.add_user("alice", "right-secret", "admin", desktop="d1")

    def attempt(terminal: str, secret: str) -> object:
        prepared = broker.prepare_login(terminal, "alice", secret)
        return broker.apply_login(prepared.run()) if isinstance(prepared, LoginCheck) else None

    for n in range(5):  # five connections, one wrong guess each
        terminal = f"viewer-10.0.0.9~{n:06x}"
        broker.terminal_connected(terminal, TerminalInfo(address="10.0.0.9"))
        attempt(terminal, "wrong")
        broker.terminal_disconnected(terminal)
    broker.terminal_connected("viewer-10.0.0.9~ffffff", TerminalInfo(address="10.0.0.9"))
    assert attempt("viewer-10.0.0.9~ffffff", "right-secret") is None  # refused unchecked
    shown = broker.assignment("viewer-10.0.0.9~ffffff")
    assert isinstance(shown, ShowScreen) and shown.message.startswith("Too many failed attempts")
    broker.terminal_connected("viewer-10.0.0.8~000000", TerminalInfo(address="10.0.0.8"))
    attempt("viewer-10.0.0.8~000000", "right-secret")  # another address: checked, logged in
    assert shows(broker.assignment("viewer-10.0.0.8~000000")) == ("d1", True)
