"""The RFB handshake: both roles against each other, hand-built spec bytes,
VNC Authentication's DES, and fuzzing where only ProtocolError may escape."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocols.rfb.constants import SecurityType, VeNCryptSubtype, Version
from protocols.rfb.errors import ProtocolError
from protocols.rfb.handshake import (
    AuthenticationFailed,
    ClientHandshake,
    ConnectionFailed,
    HandshakeDone,
    PlainCredentials,
    ServerHandshake,
    StartTLS,
    VncAuthResponse,
)
from protocols.rfb.limits import Limits
from protocols.rfb.security import vncauth
from protocols.rfb.security.vncauth import check_response, des_key, encrypt_challenge

PASSWORD = "s3cret!"
USER = "alice"
ALL_METHODS: list[int] = [SecurityType.NONE, SecurityType.VNC_AUTH, *VeNCryptSubtype]
TLS_SUBTYPES = [m for m in VeNCryptSubtype if m != VeNCryptSubtype.PLAIN]
ANONYMOUS = {VeNCryptSubtype.TLS_NONE, VeNCryptSubtype.TLS_VNC, VeNCryptSubtype.TLS_PLAIN}
PASSWORD_METHODS = [
    SecurityType.VNC_AUTH,
    VeNCryptSubtype.PLAIN,
    VeNCryptSubtype.TLS_VNC,
    VeNCryptSubtype.TLS_PLAIN,
    VeNCryptSubtype.X509_VNC,
    VeNCryptSubtype.X509_PLAIN,
]
PLAIN_METHODS = {VeNCryptSubtype.PLAIN, VeNCryptSubtype.TLS_PLAIN, VeNCryptSubtype.X509_PLAIN}
FIXED_CHALLENGE = bytes(range(16))


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def rfb_string(text: str) -> bytes:
    return u32(len(text.encode())) + text.encode()


def drain(hs: ServerHandshake | ClientHandshake) -> bytes:
    """Everything queued, across a StartTLS barrier (TLS is the identity here)."""
    return b"".join(segments(hs))


def segments(hs: ServerHandshake | ClientHandshake) -> list[bytes]:
    """What is queued, as written before and after a StartTLS barrier."""
    return [part for part in (hs.data_to_send(), hs.data_to_send()) if part]


# -- running the two roles against each other ---------------------------------


@dataclass
class Talk:
    server_events: list[object] = field(default_factory=list)
    client_events: list[object] = field(default_factory=list)
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    server_error: ProtocolError | None = None
    client_error: ProtocolError | None = None


def decide(server: ServerHandshake, event: object, password: str, users: dict[str, str]) -> None:
    if isinstance(event, VncAuthResponse):
        ok = check_response(password, event.challenge, event.response)
    elif isinstance(event, PlainCredentials):
        ok = users.get(event.username) == event.password
    else:
        return
    if ok:
        server.accept_auth()
    else:
        server.reject_auth("wrong password, go away")


def feed(hs: ServerHandshake | ClientHandshake, data: bytes, events: list[object]) -> None:
    events.extend(hs.receive_data(data))


def converse(
    server: ServerHandshake,
    client: ClientHandshake,
    *,
    server_version: bytes | None = None,
    password: str = PASSWORD,
    users: dict[str, str] | None = None,
) -> Talk:
    """Pass bytes both ways until neither side has anything more to say.

    ``server_version`` replaces the server's version string on the way to
    the client, to make our 3.8 server meet a client answering 3.3 or 3.7.
    """
    users = {USER: PASSWORD} if users is None else users
    talk = Talk()
    first = True
    for _ in range(50):
        out = segments(server)
        if first and server_version is not None:
            out[0] = server_version + out[0][12:]
        first = False
        for part in out:
            talk.to_client += part
            if talk.client_error is None:
                try:
                    feed(client, part, talk.client_events)
                except ProtocolError as error:
                    talk.client_error = error
        back = segments(client)
        for part in back:
            talk.to_server += part
            if talk.server_error is None:
                try:
                    before = len(talk.server_events)
                    feed(server, part, talk.server_events)
                    for event in talk.server_events[before:]:
                        decide(server, event, password, users)
                except ProtocolError as error:
                    talk.server_error = error
        if not out and not back:
            break
    if talk.server_error is None:
        try:
            feed(server, b"", talk.server_events)  # a HandshakeDone pending after accept
        except ProtocolError as error:
            talk.server_error = error
    return talk


def client_for(method: int, **kwargs: object) -> ClientHandshake:
    return ClientHandshake(password=PASSWORD, username=USER, methods=[method], **kwargs)


VERSIONS = {Version.V3_3: b"RFB 003.003\n", Version.V3_7: b"RFB 003.007\n", Version.V3_8: None}


@pytest.mark.parametrize("version", list(VERSIONS), ids=lambda v: v.name)
@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: str(int(m)))
def test_both_roles_agree_for_every_version_and_method(version: Version, method: int) -> None:
    server = ServerHandshake([method])
    client = client_for(method)
    talk = converse(server, client, server_version=VERSIONS[version])
    if version is Version.V3_3 and method >= 256:
        # 3.3 has no VeNCrypt: the server refuses with a reason the client reports.
        assert isinstance(talk.client_error, ConnectionFailed)
        assert talk.server_error is not None
        assert talk.client_error.server_reason == talk.server_error.reason
        return
    assert talk.server_error is None and talk.client_error is None
    assert server.done and client.done
    expected = HandshakeDone(
        version,
        SecurityType.VENCRYPT if method >= 256 else method,
        method if method >= 256 else None,
        USER if method in PLAIN_METHODS else None,
    )
    assert server.result == client.result == expected
    assert talk.server_events[-1] == talk.client_events[-1] == expected
    starts = [StartTLS(method in ANONYMOUS)] if method in TLS_SUBTYPES else []
    assert [e for e in talk.server_events if isinstance(e, StartTLS)] == starts
    assert [e for e in talk.client_events if isinstance(e, StartTLS)] == starts
    assert server.leftover == b"" and client.leftover == b""


WRONG_PASSWORD_CASES = [
    (version, method)
    for version in VERSIONS
    for method in PASSWORD_METHODS
    # 3.3 has only VNC Authentication; it refuses VeNCrypt before any password.
    if version is not Version.V3_3 or method == SecurityType.VNC_AUTH
]


@pytest.mark.parametrize(("version", "method"), WRONG_PASSWORD_CASES)
def test_wrong_password_fails_on_the_client_with_the_servers_reason(
    version: Version, method: int
) -> None:
    server = ServerHandshake([method])
    client = ClientHandshake(password="not it", username=USER, methods=[method])
    talk = converse(server, client, server_version=VERSIONS[version])
    assert isinstance(talk.client_error, AuthenticationFailed)
    if version is Version.V3_8:
        assert talk.client_error.server_reason == "wrong password, go away"
        assert talk.client_error.reason == "wrong password, go away"
    else:
        assert talk.client_error.server_reason == ""
        assert talk.to_client.endswith(u32(1))
    assert not server.done and not client.done
    with pytest.raises(ProtocolError, match="rejected"):
        server.receive_data(b"\x01")


def test_unknown_plain_user_is_rejected() -> None:
    server = ServerHandshake([VeNCryptSubtype.TLS_PLAIN])
    client = ClientHandshake(password=PASSWORD, username="mallory", methods=[259])
    talk = converse(server, client)
    assert isinstance(talk.client_error, AuthenticationFailed)
    assert [e for e in talk.server_events if isinstance(e, PlainCredentials)] == [
        PlainCredentials("mallory", PASSWORD)
    ]


def test_client_default_methods_follow_its_credentials() -> None:
    server = ServerHandshake([SecurityType.NONE, SecurityType.VNC_AUTH, VeNCryptSubtype.TLS_NONE])
    # With a password the client prefers TLS, then VNC Authentication.
    assert converse(server, ClientHandshake(password="x")).server_events[-1] == HandshakeDone(
        Version.V3_8, SecurityType.VENCRYPT, VeNCryptSubtype.TLS_NONE, None
    )
    server = ServerHandshake([SecurityType.NONE, SecurityType.VNC_AUTH])
    client = ClientHandshake(password=PASSWORD)
    converse(server, client)
    assert client.result is not None and client.result.security_type == SecurityType.VNC_AUTH
    # Without credentials only None (and the TLS/X509 None subtypes) remain.
    server = ServerHandshake([SecurityType.VNC_AUTH, SecurityType.NONE])
    client = ClientHandshake()
    converse(server, client)
    assert client.result is not None and client.result.security_type == SecurityType.NONE


def test_client_picks_subtype_by_its_own_preference() -> None:
    server = ServerHandshake([VeNCryptSubtype.TLS_NONE, VeNCryptSubtype.X509_VNC])
    client = ClientHandshake(password=PASSWORD, methods=[VeNCryptSubtype.X509_VNC, 257])
    converse(server, client)
    assert client.result is not None and client.result.subtype == VeNCryptSubtype.X509_VNC


def test_no_common_method_fails_on_both_sides() -> None:
    server = ServerHandshake([SecurityType.VNC_AUTH])
    client = ClientHandshake()
    talk = converse(server, client)
    assert talk.client_error is not None and "none accepted" in talk.client_error.reason
    assert not server.done


def test_constructor_checks_configuration() -> None:
    with pytest.raises(ValueError):
        ServerHandshake([])
    with pytest.raises(ValueError):
        ServerHandshake([SecurityType.VENCRYPT])  # name subtypes, not the envelope
    with pytest.raises(ValueError):
        ClientHandshake(methods=[SecurityType.VNC_AUTH])  # no password
    with pytest.raises(ValueError):
        ClientHandshake(password="x", methods=[VeNCryptSubtype.TLS_PLAIN])  # no username
    with pytest.raises(ValueError):
        ClientHandshake(password="x" * 5000, methods=[VeNCryptSubtype.TLS_PLAIN], username="u")
    with pytest.raises(RuntimeError):
        ServerHandshake([SecurityType.VNC_AUTH]).accept_auth()


# -- hand-built byte sequences (rfbproto) --------------------------------------


def server_after_version(methods: Sequence[int], client_version: bytes) -> ServerHandshake:
    server = ServerHandshake(methods)
    assert server.data_to_send() == b"RFB 003.008\n"
    server.receive_data(client_version)
    return server


def test_server_3_8_none_sends_security_result() -> None:
    server = server_after_version([SecurityType.NONE], b"RFB 003.008\n")
    assert server.data_to_send() == b"\x01\x01"
    assert server.receive_data(b"\x01") == [HandshakeDone(Version.V3_8, 1, None, None)]
    assert server.data_to_send() == u32(0)


def test_server_3_7_none_sends_no_security_result() -> None:
    server = server_after_version([SecurityType.NONE], b"RFB 003.007\n")
    assert server.data_to_send() == b"\x01\x01"
    assert server.receive_data(b"\x01") == [HandshakeDone(Version.V3_7, 1, None, None)]
    assert server.data_to_send() == b""


def test_server_3_3_none_chooses_and_sends_no_result() -> None:
    server = ServerHandshake([VeNCryptSubtype.TLS_NONE, SecurityType.NONE, SecurityType.VNC_AUTH])
    server.data_to_send()
    done = HandshakeDone(Version.V3_3, SecurityType.NONE, None, None)
    assert server.receive_data(b"RFB 003.003\n") == [done]
    assert server.data_to_send() == u32(1)
    assert server.done


@pytest.mark.parametrize(
    ("client_version", "accept", "result"),
    [
        (b"RFB 003.003\n", True, u32(0)),
        (b"RFB 003.003\n", False, u32(1)),
        (b"RFB 003.007\n", False, u32(1)),
        (b"RFB 003.008\n", False, u32(1) + rfb_string("bad password")),
        (b"RFB 003.008\n", True, u32(0)),
    ],
)
def test_server_vnc_auth_bytes(client_version: bytes, accept: bool, result: bytes) -> None:
    with mock.patch.object(vncauth, "make_challenge", return_value=FIXED_CHALLENGE):
        server = server_after_version([SecurityType.VNC_AUTH], client_version)
        if client_version == b"RFB 003.003\n":
            assert server.data_to_send() == u32(2) + FIXED_CHALLENGE
        else:
            assert server.data_to_send() == b"\x01\x02"
            assert server.receive_data(b"\x02") == []
            assert server.data_to_send() == FIXED_CHALLENGE
    response = encrypt_challenge("pw", FIXED_CHALLENGE)
    assert server.receive_data(response) == [VncAuthResponse(FIXED_CHALLENGE, response)]
    assert server.data_to_send() == b""
    if accept:
        server.accept_auth()
    else:
        server.reject_auth("bad password")
    assert server.data_to_send() == result
    assert server.done is accept


def test_client_3_8_vnc_auth_bytes() -> None:
    client = ClientHandshake(password="pw")
    assert client.data_to_send() == b""
    assert client.receive_data(b"RFB 003.008\n") == []
    assert client.data_to_send() == b"RFB 003.008\n"
    assert client.receive_data(b"\x02\x01\x02") == []
    assert client.data_to_send() == b"\x02"
    assert client.receive_data(FIXED_CHALLENGE) == []
    assert client.data_to_send() == encrypt_challenge("pw", FIXED_CHALLENGE)
    assert client.receive_data(u32(0)) == [HandshakeDone(Version.V3_8, 2, None, None)]


def test_client_3_3_takes_the_servers_choice() -> None:
    client = ClientHandshake(password="pw")
    client.receive_data(b"RFB 003.003\n")
    assert client.data_to_send() == b"RFB 003.003\n"
    client.receive_data(u32(2) + FIXED_CHALLENGE)
    assert client.data_to_send() == encrypt_challenge("pw", FIXED_CHALLENGE)
    with pytest.raises(AuthenticationFailed) as failed:
        client.receive_data(u32(1))
    assert failed.value.server_reason == ""


@pytest.mark.parametrize(
    ("server_bytes", "reply"),
    [
        (b"RFB 003.003\n" + u32(0) + rfb_string("too many clients"), b"RFB 003.003\n"),
        (b"RFB 003.007\n" + b"\x00" + rfb_string("too many clients"), b"RFB 003.007\n"),
        (b"RFB 003.008\n" + b"\x00" + rfb_string("too many clients"), b"RFB 003.008\n"),
    ],
)
def test_client_reports_connection_failed_reason(server_bytes: bytes, reply: bytes) -> None:
    client = ClientHandshake()
    with pytest.raises(ConnectionFailed) as failed:
        client.receive_data(server_bytes)
    assert failed.value.server_reason == "too many clients"
    assert client.data_to_send() == reply


def test_client_3_8_none_reads_result_and_3_7_does_not() -> None:
    client = ClientHandshake()
    assert client.receive_data(b"RFB 003.008\n\x01\x01") == []
    assert client.data_to_send() == b"RFB 003.008\n\x01"
    assert client.receive_data(u32(0) + b"\x00\x10") == [HandshakeDone(Version.V3_8, 1, None, None)]
    assert client.leftover == b"\x00\x10"
    client = ClientHandshake()
    assert client.receive_data(b"RFB 003.007\n\x01\x01") == [
        HandshakeDone(Version.V3_7, 1, None, None)
    ]
    assert client.data_to_send() == b"RFB 003.007\n\x01"


@pytest.mark.parametrize(
    ("client_version", "negotiated"),
    [
        (b"RFB 003.003\n", Version.V3_3),
        (b"RFB 003.005\n", Version.V3_3),
        (b"RFB 003.006\n", Version.V3_3),
        (b"RFB 003.889\n", Version.V3_3),
        (b"RFB 003.007\n", Version.V3_7),
        (b"RFB 003.008\n", Version.V3_8),
    ],
)
def test_server_maps_client_versions(client_version: bytes, negotiated: Version) -> None:
    server = ServerHandshake([SecurityType.NONE])
    server.data_to_send()
    server.receive_data(client_version)
    assert server.version is negotiated
    expected = u32(1) if negotiated is Version.V3_3 else b"\x01\x01"
    assert server.data_to_send() == expected


@pytest.mark.parametrize(
    "client_version",
    [b"RFB 004.000\n", b"RFB 002.009\n", b"RFB 003.00x\n", b"GET / HTTP/1.", b"rfb 003.008\n"],
)
def test_server_refuses_bad_versions_with_a_3_3_failure(client_version: bytes) -> None:
    server = ServerHandshake([SecurityType.NONE])
    server.data_to_send()
    with pytest.raises(ProtocolError) as failed:
        server.receive_data(client_version)
    sent = server.data_to_send()
    assert sent == u32(0) + rfb_string(failed.value.reason)
    with pytest.raises(ProtocolError):
        server.receive_data(b"more")


@pytest.mark.parametrize(
    ("server_version", "answer"),
    [
        (b"RFB 003.003\n", b"RFB 003.003\n"),
        (b"RFB 003.005\n", b"RFB 003.003\n"),
        (b"RFB 003.007\n", b"RFB 003.007\n"),
        (b"RFB 003.008\n", b"RFB 003.008\n"),
        (b"RFB 003.889\n", b"RFB 003.008\n"),
        (b"RFB 004.001\n", b"RFB 003.008\n"),
    ],
)
def test_client_answers_server_versions(server_version: bytes, answer: bytes) -> None:
    client = ClientHandshake()
    client.receive_data(server_version)
    assert client.data_to_send() == answer


@pytest.mark.parametrize("server_version", [b"RFB 003.002\n", b"RFB 002.008\n", b"SSH-2.0-x\r\n\n"])
def test_client_refuses_bad_server_versions(server_version: bytes) -> None:
    with pytest.raises(ProtocolError):
        ClientHandshake().receive_data(server_version)


def test_server_3_3_without_none_or_vnc_auth_refuses() -> None:
    server = ServerHandshake([VeNCryptSubtype.TLS_NONE])
    server.data_to_send()
    with pytest.raises(ProtocolError) as failed:
        server.receive_data(b"RFB 003.003\n")
    assert server.data_to_send() == u32(0) + rfb_string(failed.value.reason)


def test_server_refuses_unoffered_type_with_security_result() -> None:
    server = server_after_version([SecurityType.VNC_AUTH], b"RFB 003.008\n")
    server.data_to_send()
    with pytest.raises(ProtocolError) as failed:
        server.receive_data(b"\x01")
    assert server.data_to_send() == u32(1) + rfb_string(failed.value.reason)
    server = server_after_version([SecurityType.VNC_AUTH], b"RFB 003.007\n")
    server.data_to_send()
    with pytest.raises(ProtocolError):
        server.receive_data(b"\x00")
    assert server.data_to_send() == u32(1)


def vencrypt_server(methods: Sequence[int]) -> ServerHandshake:
    server = server_after_version(methods, b"RFB 003.008\n")
    assert server.data_to_send() == b"\x01\x13"
    server.receive_data(b"\x13")
    assert server.data_to_send() == b"\x00\x02"
    return server


def test_server_x509_plain_bytes() -> None:
    server = vencrypt_server([VeNCryptSubtype.X509_PLAIN, VeNCryptSubtype.TLS_NONE])
    server.receive_data(b"\x00\x02")
    assert server.data_to_send() == b"\x00" + b"\x02" + u32(262) + u32(257)
    assert server.receive_data(u32(262)) == [StartTLS(anonymous=False)]
    assert server.data_to_send() == b"\x01"  # the ack goes out before TLS
    assert server.data_to_send() == b""
    creds = u32(5) + u32(6) + b"alice" + b"secret"
    assert server.receive_data(creds) == [PlainCredentials("alice", "secret")]
    server.accept_auth()
    assert server.data_to_send() == u32(0)
    assert server.result == HandshakeDone(Version.V3_8, 19, 262, "alice")


def test_server_tls_none_keeps_the_result_behind_the_tls_barrier() -> None:
    server = vencrypt_server([VeNCryptSubtype.TLS_NONE])
    server.receive_data(b"\x00\x02")
    server.data_to_send()
    events = server.receive_data(u32(257))
    assert events == [StartTLS(anonymous=True), HandshakeDone(Version.V3_8, 19, 257, None)]
    assert server.data_to_send() == b"\x01"
    assert server.data_to_send() == u32(0)


def test_server_plain_without_tls_has_no_ack() -> None:
    server = vencrypt_server([VeNCryptSubtype.PLAIN])
    server.receive_data(b"\x00\x02")
    server.data_to_send()
    assert server.receive_data(u32(256) + u32(1) + u32(0) + b"u") == [PlainCredentials("u", "")]
    assert server.data_to_send() == b""


def test_server_refuses_other_vencrypt_versions() -> None:
    server = vencrypt_server([VeNCryptSubtype.TLS_NONE])
    with pytest.raises(ProtocolError):
        server.receive_data(b"\x00\x01")
    assert server.data_to_send() == b"\xff"


def test_server_refuses_unoffered_subtype() -> None:
    server = vencrypt_server([VeNCryptSubtype.X509_VNC])
    server.receive_data(b"\x00\x02")
    server.data_to_send()
    with pytest.raises(ProtocolError) as failed:
        server.receive_data(u32(257))
    assert server.data_to_send() == u32(1) + rfb_string(failed.value.reason)


@pytest.mark.parametrize(
    "credentials",
    [u32(5000) + u32(0), u32(0) + u32(5000), u32(2) + u32(0) + b"\xff\xfe"],
    ids=["long-user", "long-password", "bad-utf8"],
)
def test_server_refuses_bad_plain_credentials(credentials: bytes) -> None:
    server = vencrypt_server([VeNCryptSubtype.PLAIN])
    server.receive_data(b"\x00\x02")
    server.data_to_send()
    with pytest.raises(ProtocolError):
        server.receive_data(u32(256) + credentials)
    assert server.data_to_send()[:4] == u32(1)


def test_bytes_before_tls_are_not_trusted() -> None:
    # A man in the middle appending cleartext "credentials" behind the subtype.
    server = vencrypt_server([VeNCryptSubtype.TLS_PLAIN])
    server.receive_data(b"\x00\x02")
    server.data_to_send()
    with pytest.raises(ProtocolError, match="before TLS"):
        server.receive_data(u32(259) + u32(1) + u32(1) + b"ab")
    client = ClientHandshake(password="p", methods=[VeNCryptSubtype.TLS_VNC])
    client.receive_data(b"RFB 003.008\n\x01\x13\x00\x02\x00\x01" + u32(258))
    with pytest.raises(ProtocolError, match="before TLS"):
        client.receive_data(b"\x01" + FIXED_CHALLENGE)


def test_client_tls_plain_sends_credentials_only_inside_tls() -> None:
    client = ClientHandshake(password="pw", username="bob", methods=[VeNCryptSubtype.TLS_PLAIN])
    client.receive_data(b"RFB 003.008\n\x01\x13\x00\x02\x00\x02" + u32(258) + u32(259))
    assert client.data_to_send() == b"RFB 003.008\n\x13\x00\x02" + u32(259)
    assert client.receive_data(b"\x01") == [StartTLS(anonymous=True)]
    assert client.data_to_send() == b""  # nothing in clear
    assert client.data_to_send() == u32(3) + u32(2) + b"bobpw"
    assert client.receive_data(u32(0)) == [HandshakeDone(Version.V3_8, 19, 259, "bob")]


@pytest.mark.parametrize(
    ("server_bytes", "client_reply", "message"),
    [
        (b"\x00\x01", b"\x00\x00", "VeNCrypt 0.1"),
        (b"\x00\x02\xff", b"\x00\x02", "refused"),
        (b"\x00\x02\x00\x00", b"\x00\x02", "no VeNCrypt subtypes"),
        (b"\x00\x02\x00\x01" + u32(258) + b"\x00", b"\x00\x02" + u32(258), "refused"),
    ],
)
def test_client_vencrypt_failures(server_bytes: bytes, client_reply: bytes, message: str) -> None:
    client = ClientHandshake(password="p", methods=[VeNCryptSubtype.TLS_VNC])
    client.receive_data(b"RFB 003.008\n\x01\x13")
    client.data_to_send()
    with pytest.raises(ProtocolError, match=message):
        client.receive_data(server_bytes)
    assert client.data_to_send() == client_reply


def test_client_rejects_unknown_security_result_and_long_reasons() -> None:
    client = ClientHandshake()
    client.receive_data(b"RFB 003.008\n\x01\x01")
    with pytest.raises(ProtocolError, match="unknown SecurityResult"):
        client.receive_data(u32(7))
    client = ClientHandshake(limits=Limits(max_reason=10))
    with pytest.raises(ProtocolError, match="reason"):
        client.receive_data(b"RFB 003.008\n\x00" + u32(11))


def test_accept_with_pipelined_client_init_leaves_it_over() -> None:
    server = server_after_version([SecurityType.VNC_AUTH], b"RFB 003.008\n")
    response = encrypt_challenge(PASSWORD, FIXED_CHALLENGE)
    with mock.patch.object(vncauth, "make_challenge", return_value=FIXED_CHALLENGE):
        events = server.receive_data(b"\x02" + response + b"\x01")
    assert events == [VncAuthResponse(FIXED_CHALLENGE, response)]
    server.accept_auth()
    assert server.done and server.leftover == b"\x01"
    done = HandshakeDone(Version.V3_8, 2, None, None)
    assert server.result == done
    assert server.receive_data(b"") == [done]
    assert server.receive_data(b"\x02") == []
    assert server.leftover == b"\x01\x02"


def test_flooding_while_waiting_for_a_decision_is_bounded() -> None:
    server = server_after_version([SecurityType.VNC_AUTH], b"RFB 003.008\n")
    server.receive_data(b"\x02" + bytes(16))
    with pytest.raises(ProtocolError, match="too much"):
        for _ in range(100):
            server.receive_data(bytes(4096))


# -- VNC Authentication DES ----------------------------------------------------

# VNC stores passwords as DES(fixed key, password) under the same key
# convention as the challenge response, so published stored-password values
# are vectors for encrypt_challenge with that fixed key as the "password":
# "Secure!" -> d7a514d8c556aade (e.g. TightVNC's registry value) and
# "password" -> dbd83cfd727a1458 (e.g. UltraVNC's default ultravnc.ini).
STORED_PASSWORD_KEY = bytes([23, 82, 107, 6, 35, 78, 88, 7]).decode("ascii")


def test_des_matches_published_vectors() -> None:
    plain = b"Secure!\x00" + b"password"
    expected = bytes.fromhex("d7a514d8c556aadedbd83cfd727a1458")
    assert encrypt_challenge(STORED_PASSWORD_KEY, plain) == expected


def test_des_key_mirrors_each_byte_and_uses_8_bytes() -> None:
    assert des_key("\x01\x40") == b"\x80\x02" + bytes(6)
    assert des_key("é") == b"\xc3\x95" + bytes(6)  # UTF-8 c3 a9, each mirrored
    assert des_key("abcdefghXYZ") == des_key("abcdefgh")
    assert des_key("") == bytes(8)
    for value in range(128):
        mirrored = des_key(chr(value))[0]
        assert all((value >> bit & 1) == (mirrored >> (7 - bit) & 1) for bit in range(8))


def test_response_depends_only_on_first_8_password_bytes() -> None:
    assert encrypt_challenge("password1", FIXED_CHALLENGE) == encrypt_challenge(
        "password", FIXED_CHALLENGE
    )
    assert encrypt_challenge("passwor", FIXED_CHALLENGE) != encrypt_challenge(
        "password", FIXED_CHALLENGE
    )


def same_des_key(one: str, other: str) -> bool:
    """DES ignores the lowest bit of each key byte (parity), which is the
    highest bit of a password byte once mirrored."""
    return all(not (a ^ b) & 0xFE for a, b in zip(des_key(one), des_key(other), strict=True))


def test_des_ignores_the_top_bit_of_each_password_byte() -> None:
    # "é" is c3 a9 in UTF-8; "C)" is 43 29: the same but for the top bits.
    assert same_des_key("é", "C)")
    assert encrypt_challenge("é", FIXED_CHALLENGE) == encrypt_challenge("C)", FIXED_CHALLENGE)
    assert encrypt_challenge("é", FIXED_CHALLENGE) != encrypt_challenge("D)", FIXED_CHALLENGE)


@settings(max_examples=50, deadline=None)
@given(
    password=st.text(max_size=12),
    wrong=st.text(max_size=12),
    challenge=st.binary(min_size=16, max_size=16),
)
def test_check_response_accepts_exactly_the_right_answer(
    password: str, wrong: str, challenge: bytes
) -> None:
    response = encrypt_challenge(password, challenge)
    assert len(response) == 16
    assert check_response(password, challenge, response)
    assert check_response(wrong, challenge, response) == same_des_key(password, wrong)
    assert not check_response(password, challenge, response[:15])
    flipped = bytes([response[0] ^ 1]) + response[1:]
    assert not check_response(password, challenge, flipped)


# -- fuzzing -------------------------------------------------------------------


def transcript(method: int, version: Version, *, to_server: bool) -> bytes:
    """A valid byte stream one role sends in a complete handshake."""
    with mock.patch.object(vncauth, "make_challenge", return_value=FIXED_CHALLENGE):
        server = ServerHandshake([method, SecurityType.NONE])
        talk = converse(server, client_for(method), server_version=VERSIONS[version])
    return bytes(talk.to_server if to_server else talk.to_client)


@dataclass
class Outcome:
    events: list[object]
    output: bytes
    error: tuple[str, str] | None
    done: bool
    leftover: bytes
    tls_at: int | None  # bytes consumed when StartTLS came out, fed one at a time


def run(
    make: Callable[[], ServerHandshake | ClientHandshake],
    stream: bytes,
    cuts: Sequence[int],
    accept: bool,
) -> Outcome:
    """Feed ``stream`` split at ``cuts``, answering auth events at once."""
    with mock.patch.object(vncauth, "make_challenge", return_value=FIXED_CHALLENGE):
        return _run(make(), stream, cuts, accept)


def _run(
    hs: ServerHandshake | ClientHandshake, stream: bytes, cuts: Sequence[int], accept: bool
) -> Outcome:
    events: list[object] = []
    output = bytearray(drain(hs))
    error = None
    tls_at = None
    bounds = [0, *sorted(set(cuts)), len(stream)]
    try:
        for start, end in itertools.pairwise(bounds):
            new = hs.receive_data(stream[start:end])
            if any(isinstance(e, StartTLS) for e in new):
                tls_at = end
            events += new
            output += drain(hs)
            if isinstance(hs, ServerHandshake) and any(
                isinstance(e, VncAuthResponse | PlainCredentials) for e in new
            ):
                if accept:
                    hs.accept_auth()
                else:
                    hs.reject_auth("no")
                output += drain(hs)
        events += hs.receive_data(b"")
    except ProtocolError as exc:
        error = (type(exc).__name__, exc.reason)
    output += drain(hs)
    return Outcome(events, bytes(output), error, hs.done, hs.leftover, tls_at)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        if not out and kind != 1:
            continue
        index = position % (len(out) + 1)
        if kind == 0 and index < len(out):
            out[index] = value
        elif kind == 1:
            out.insert(index, value)
        elif kind == 2 and index < len(out):
            del out[index]
        elif kind == 3:
            del out[index:]
    return bytes(out)


method_strategy = st.sampled_from(ALL_METHODS)
version_strategy = st.sampled_from([Version.V3_3, Version.V3_7, Version.V3_8])
edits_strategy = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 4096), st.integers(0, 255)), max_size=4
)


def check_chunking(
    make: Callable[[], ServerHandshake | ClientHandshake],
    stream: bytes,
    cuts: list[int],
    accept: bool,
) -> None:
    reference = run(make, stream, range(1, len(stream)), accept)
    event(f"done={reference.done} error={reference.error and reference.error[0]}")
    forced = [*cuts, reference.tls_at] if reference.tls_at is not None else cuts
    chunked = run(make, stream, [c % (len(stream) + 1) for c in forced], accept)
    whole = run(make, stream, [] if reference.tls_at is None else [reference.tls_at], accept)
    for outcome in (chunked, whole):
        assert (outcome.events, outcome.output, outcome.error) == (
            reference.events,
            reference.output,
            reference.error,
        )
        assert (outcome.done, outcome.leftover) == (reference.done, reference.leftover)


def server_maker(method: int) -> Callable[[], ServerHandshake]:
    return lambda: ServerHandshake([method, SecurityType.NONE])


def client_maker(method: int) -> Callable[[], ClientHandshake]:
    return lambda: client_for(method)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    method=method_strategy,
    version=version_strategy,
    edits=edits_strategy,
    tail=st.binary(max_size=8),
    cuts=st.lists(st.integers(0, 4096), max_size=6),
    accept=st.booleans(),
)
def test_fuzz_server_with_mutated_client_streams(
    method: int, version: Version, edits: list, tail: bytes, cuts: list[int], accept: bool
) -> None:
    stream = mutate(transcript(method, version, to_server=True), edits) + tail
    check_chunking(server_maker(method), stream, cuts, accept)


@FUZZ
@given(
    method=method_strategy,
    version=version_strategy,
    edits=edits_strategy,
    tail=st.binary(max_size=8),
    cuts=st.lists(st.integers(0, 4096), max_size=6),
)
def test_fuzz_client_with_mutated_server_streams(
    method: int, version: Version, edits: list, tail: bytes, cuts: list[int]
) -> None:
    stream = mutate(transcript(method, version, to_server=False), edits) + tail
    check_chunking(client_maker(method), stream, cuts, True)


@FUZZ
@given(
    method=method_strategy,
    prefix=st.sampled_from([b"", b"RFB 003.008\n", b"RFB 003.003\n", b"RFB 003.007\n"]),
    noise=st.binary(max_size=64),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    server_role=st.booleans(),
)
def test_fuzz_both_roles_with_random_bytes(
    method: int, prefix: bytes, noise: bytes, cuts: list[int], server_role: bool
) -> None:
    make = server_maker(method) if server_role else client_maker(method)
    check_chunking(make, prefix + noise, cuts, True)
