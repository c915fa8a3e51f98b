"""The RFB handshake for both roles, sans I/O: ProtocolVersion and Security.

Covers everything up to and including SecurityResult, for security types
None, VNC Authentication and VeNCrypt (Plain, TLSNone, TLSVnc, TLSPlain,
X509None, X509Vnc, X509Plain), with protocol versions 3.3, 3.7 and 3.8.

Driving either role::

    hs = ServerHandshake([VeNCryptSubtype.TLS_VNC, SecurityType.VNC_AUTH])
    transport.write(hs.data_to_send())         # the server's version string
    ...
    events = hs.receive_data(data)             # may raise ProtocolError
    transport.write(hs.data_to_send())         # what must go out before TLS
    for event in events:
        if isinstance(event, StartTLS):
            transport.startTLS(...)            # then feed decrypted bytes
            transport.write(hs.data_to_send()) # what must go out inside TLS
        elif isinstance(event, VncAuthResponse):
            if check_response(password, event.challenge, event.response):
                hs.accept_auth()
            else:
                hs.reject_auth("wrong password")
            transport.write(hs.data_to_send())
        elif isinstance(event, HandshakeDone):
            ...                                # pass hs.leftover on

``data_to_send()`` never returns bytes from both sides of a StartTLS: call it
before starting TLS and again after.  After ``accept_auth()`` the handshake
is done at once (``done``, ``result``); its HandshakeDone event is also
returned by the next ``receive_data()`` call.

On a protocol violation the server role first queues the failure message
the protocol has for that moment, then raises ProtocolError: flush
``data_to_send()`` and close.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import cast

from .constants import SecurityType, VeNCryptSubtype, Version
from .errors import ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .security import (
    PLAIN_TOP_LEVEL,
    check_methods,
    default_client_methods,
    inner_auth,
    needs_password,
    needs_username,
    top_level_types,
    vencrypt,
    vencrypt_subtypes,
    vncauth,
    wire,
)
from .security.engine import PAUSE, Engine, Flow, Pause, read
from .security.vencrypt import InnerAuth

__all__ = [
    "AuthenticationFailed",
    "ClientHandshake",
    "ConnectionFailed",
    "HandshakeDone",
    "HandshakeEvent",
    "PlainCredentials",
    "ServerHandshake",
    "StartTLS",
    "VncAuthResponse",
]


class AuthenticationFailed(ProtocolError):
    """The server's SecurityResult said authentication failed.

    ``reason`` is the server's reason (3.8 sends one) or a generic sentence;
    ``server_reason`` is exactly what the server sent ("" before 3.8).
    """

    def __init__(self, server_reason: str = "") -> None:
        super().__init__(server_reason or "authentication failed")
        self.server_reason = server_reason


class ConnectionFailed(ProtocolError):
    """The server refused the connection instead of offering security types.

    ``server_reason`` is the reason text the server sent.
    """

    def __init__(self, server_reason: str) -> None:
        super().__init__(server_reason or "the server refused the connection")
        self.server_reason = server_reason


@dataclass(frozen=True)
class StartTLS:
    """Start TLS on the transport now (server side as TLS server, client side
    as TLS client), after writing ``data_to_send()``; from then on feed the
    decrypted bytes."""

    anonymous: bool  # True for TLS* subtypes (anonymous DH), False for X509*


@dataclass(frozen=True)
class VncAuthResponse:
    """Server role: check with ``vncauth.check_response(password, challenge,
    response)``, then call ``accept_auth()`` or ``reject_auth(reason)``."""

    challenge: bytes
    response: bytes


@dataclass(frozen=True)
class PlainCredentials:
    """Server role: check these, then ``accept_auth()`` or ``reject_auth()``."""

    username: str
    password: str


@dataclass(frozen=True)
class HandshakeDone:
    version: Version  # negotiated
    security_type: int  # SecurityType value chosen
    subtype: int | None  # VeNCrypt subtype, if any
    username: str | None


HandshakeEvent = StartTLS | VncAuthResponse | PlainCredentials | HandshakeDone


class _Role:
    """What both roles share: the engine, reading helpers, finishing."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._engine = Engine()
        self._version: Version | None = None
        self._result: HandshakeDone | None = None

    def receive_data(self, data: bytes) -> list[HandshakeEvent]:
        """Feed received bytes (decrypted ones once TLS runs); return events."""
        return cast(list[HandshakeEvent], self._engine.feed(bytes(data)))

    def data_to_send(self) -> bytes:
        """Bytes to write now, never spanning a StartTLS."""
        return self._engine.take_output()

    @property
    def done(self) -> bool:
        return self._engine.finished

    @property
    def result(self) -> HandshakeDone | None:
        """The HandshakeDone once the handshake succeeded."""
        return self._result

    @property
    def leftover(self) -> bytes:
        """Bytes received after the handshake finished; they belong to the
        next phase (ClientInit or ServerInit)."""
        return self._engine.leftover

    @property
    def version(self) -> Version | None:
        """The negotiated version, once known."""
        return self._version

    # -- helpers for flows ------------------------------------------------
    def _read_u8(self) -> Generator[int | Pause, bytes, int]:
        data = yield from read(1)
        return data[0]

    def _read_u32(self) -> Generator[int | Pause, bytes, int]:
        data = yield from read(4)
        return wire.parse_u32(data)

    def _read_reason(self) -> Generator[int | Pause, bytes, str]:
        length = yield from self._read_u32()
        if length > self._limits.max_reason:
            raise ProtocolError(f"reason string of {length} bytes is longer than allowed")
        data = yield from read(length)
        return wire.decode_reason(data)

    def _start_tls(self, anonymous: bool) -> None:
        self._engine.tls_barrier()
        self._engine.emit(StartTLS(anonymous))

    def _version_known(self) -> Version:
        if self._version is None:
            raise RuntimeError("the version is not negotiated yet")
        return self._version

    def _finish(self, security_type: int, subtype: int | None, username: str | None) -> None:
        version = self._version_known()
        self._result = HandshakeDone(version, SecurityType(security_type), subtype, username)
        self._engine.emit(self._result)


class ServerHandshake(_Role):
    """The server side; it offers RFB 3.8 and adapts to the client's answer."""

    def __init__(self, methods: Sequence[int], *, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(limits)
        self._methods = check_methods(methods)
        self._types = top_level_types(self._methods)
        self._subtypes = vencrypt_subtypes(self._methods)
        self._reject_reason: str | None = None
        self._engine.write(Version.V3_8.value)
        self._engine.start(self._flow())

    def accept_auth(self) -> None:
        """Accept the credentials of the last VncAuthResponse/PlainCredentials."""
        self._reject_reason = None
        self._engine.resume()

    def reject_auth(self, reason: str) -> None:
        """Refuse them: queues SecurityResult failed (with ``reason`` on 3.8)."""
        self._reject_reason = reason or "authentication failed"
        self._engine.resume()

    # -- flow -------------------------------------------------------------
    def _flow(self) -> Flow:
        self._version = yield from self._receive_version()
        if self._version is Version.V3_3:
            yield from self._security_3_3()
        else:
            yield from self._security_list()

    def _receive_version(self) -> Generator[int | Pause, bytes, Version]:
        data = yield from read(wire.VERSION_SIZE)
        try:
            return wire.server_version_for(*wire.parse_version(data))
        except ProtocolError as error:
            self._write_connection_failed(Version.V3_3, error.reason)
            raise

    def _security_3_3(self) -> Flow:
        usable = [t for t in self._types if t in PLAIN_TOP_LEVEL]
        if not usable:
            reason = "no security type configured here works with RFB 3.3"
            self._write_connection_failed(Version.V3_3, reason)
            raise ProtocolError(reason)
        self._engine.write(wire.u32(usable[0]))
        yield from self._authenticate(usable[0], None)

    def _security_list(self) -> Flow:
        self._engine.write(wire.pack_security_types(self._types))
        choice = yield from self._read_u8()
        if choice not in self._types:
            raise self._refuse(f"client chose security type {choice}, which was not offered")
        if choice == SecurityType.VENCRYPT:
            yield from self._vencrypt()
        else:
            yield from self._authenticate(SecurityType(choice), None)

    def _vencrypt(self) -> Flow:
        self._engine.write(vencrypt.VERSION)
        asked = yield from read(2)
        if asked != vencrypt.VERSION:
            self._engine.write(vencrypt.VERSION_REFUSED)
            raise ProtocolError(f"client asked for VeNCrypt {asked[0]}.{asked[1]}, not 0.2")
        self._engine.write(vencrypt.VERSION_ACCEPTED + vencrypt.pack_subtypes(self._subtypes))
        chosen = yield from self._read_u32()
        if chosen not in self._subtypes:
            raise self._refuse(f"client chose VeNCrypt subtype {chosen}, which was not offered")
        info = vencrypt.SUBTYPES[chosen]
        if info.tls:
            self._engine.write(vencrypt.TLS_ACK)
            self._start_tls(info.anonymous)
        yield from self._authenticate(SecurityType.VENCRYPT, VeNCryptSubtype(chosen))

    def _authenticate(self, security_type: int, subtype: int | None) -> Flow:
        inner = inner_auth(security_type if subtype is None else subtype)
        username = None
        if inner is InnerAuth.VNC:
            challenge = vncauth.make_challenge()
            self._engine.write(challenge)
            response = yield from read(vncauth.CHALLENGE_SIZE)
            self._engine.emit(VncAuthResponse(challenge, response))
        elif inner is InnerAuth.PLAIN:
            credentials = yield from self._read_plain()
            username = credentials.username
            self._engine.emit(credentials)
        if inner is not InnerAuth.NONE:
            yield PAUSE
            if self._reject_reason is not None:
                self._reject(self._reject_reason)
                return
        if wire.sends_security_result(self._version_known(), security_type):
            self._engine.write(wire.security_result_ok())
        self._finish(security_type, subtype, username)

    def _read_plain(self) -> Generator[int | Pause, bytes, PlainCredentials]:
        header = yield from read(8)
        try:
            user_len, password_len = vencrypt.plain_lengths(header, self._limits)
        except ProtocolError as error:
            raise self._refuse(error.reason) from None
        data = yield from read(user_len + password_len)
        try:
            username = vencrypt.decode_credential(data[:user_len])
            password = vencrypt.decode_credential(data[user_len:])
        except ProtocolError as error:
            raise self._refuse(error.reason) from None
        return PlainCredentials(username, password)

    # -- failures ---------------------------------------------------------
    def _write_connection_failed(self, version: Version, reason: str) -> None:
        self._engine.write(wire.connection_failed(version, reason, self._limits.max_reason))

    def _refuse(self, reason: str) -> ProtocolError:
        """Queue SecurityResult failed and return the error to raise."""
        failed = wire.security_result_failed(self._version_known(), reason, self._limits.max_reason)
        self._engine.write(failed)
        return ProtocolError(reason)

    def _reject(self, reason: str) -> None:
        failed = wire.security_result_failed(self._version_known(), reason, self._limits.max_reason)
        self._engine.write(failed)
        self._engine.fail(ProtocolError(f"authentication rejected: {reason}"))


class ClientHandshake(_Role):
    """The client side: answers the server's version and picks a method."""

    def __init__(
        self,
        *,
        password: str | None = None,
        username: str | None = None,
        methods: Sequence[int] | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(limits)
        if methods is None:
            methods = default_client_methods(username is not None, password is not None)
        self._methods = check_methods(methods)
        self._check_credentials(username, password)
        self._username = username or ""
        self._password = password or ""
        self._types = top_level_types(self._methods)
        self._subtypes = vencrypt_subtypes(self._methods)
        self._engine.start(self._flow())

    def _check_credentials(self, username: str | None, password: str | None) -> None:
        for method in self._methods:
            if needs_password(method) and password is None:
                raise ValueError(f"security method {method} needs a password")
            if needs_username(method) and username is None:
                raise ValueError(f"security method {method} needs a username")
        for credential in (username, password):
            if credential is not None:
                vencrypt.encode_credential(credential, self._limits)

    # -- flow -------------------------------------------------------------
    def _flow(self) -> Flow:
        data = yield from read(wire.VERSION_SIZE)
        self._version = wire.client_version_for(*wire.parse_version(data))
        self._engine.write(self._version.value)
        if self._version is Version.V3_3:
            security_type = yield from self._server_choice()
        else:
            security_type = yield from self._choose_type()
        if security_type == SecurityType.VENCRYPT:
            yield from self._vencrypt()
        else:
            yield from self._authenticate(security_type, None)

    def _server_choice(self) -> Generator[int | Pause, bytes, SecurityType]:
        value = yield from self._read_u32()
        if value == SecurityType.INVALID:
            reason = yield from self._read_reason()
            raise ConnectionFailed(reason)
        if value not in PLAIN_TOP_LEVEL:
            raise ProtocolError(f"RFB 3.3 server chose security type {value}, unknown to 3.3")
        if value not in self._types:
            raise ProtocolError(f"server requires security type {value}, not accepted here")
        return SecurityType(value)

    def _choose_type(self) -> Generator[int | Pause, bytes, SecurityType]:
        count = yield from self._read_u8()
        if count == 0:
            reason = yield from self._read_reason()
            raise ConnectionFailed(reason)
        offered = yield from read(count)
        for security_type in self._types:
            if security_type in offered:
                self._engine.write(bytes([security_type]))
                return security_type
        raise ProtocolError(f"server offers security types {list(offered)}, none accepted here")

    def _vencrypt(self) -> Flow:
        offered_version = yield from read(2)
        if offered_version < vencrypt.VERSION:
            self._engine.write(vencrypt.VERSION_CANNOT)
            major, minor = offered_version
            raise ProtocolError(f"server offers VeNCrypt {major}.{minor}; 0.2 is needed")
        self._engine.write(vencrypt.VERSION)
        status = yield from self._read_u8()
        if status != 0:
            raise ProtocolError("server refused VeNCrypt 0.2")
        chosen = yield from self._choose_subtype()
        info = vencrypt.SUBTYPES[chosen]
        if info.tls:
            ack = yield from self._read_u8()
            if ack != 1:
                raise ProtocolError(f"server refused VeNCrypt subtype {chosen}")
            self._start_tls(info.anonymous)
        yield from self._authenticate(SecurityType.VENCRYPT, chosen)

    def _choose_subtype(self) -> Generator[int | Pause, bytes, VeNCryptSubtype]:
        count = yield from self._read_u8()
        if count == 0:
            raise ProtocolError("server offers no VeNCrypt subtypes")
        offered = vencrypt.unpack_subtypes((yield from read(4 * count)))
        for subtype in self._subtypes:
            if subtype in offered:
                self._engine.write(wire.u32(subtype))
                return subtype
        raise ProtocolError(f"server offers VeNCrypt subtypes {list(offered)}, none accepted here")

    def _authenticate(self, security_type: int, subtype: int | None) -> Flow:
        inner = inner_auth(security_type if subtype is None else subtype)
        username = None
        if inner is InnerAuth.VNC:
            challenge = yield from read(vncauth.CHALLENGE_SIZE)
            self._engine.write(vncauth.encrypt_challenge(self._password, challenge))
        elif inner is InnerAuth.PLAIN:
            plain = vencrypt.pack_plain(self._username, self._password, self._limits)
            self._engine.write(plain)
            username = self._username
        yield from self._security_result(security_type, subtype, username)

    def _security_result(
        self, security_type: int, subtype: int | None, username: str | None
    ) -> Flow:
        version = self._version_known()
        if wire.sends_security_result(version, security_type):
            status = yield from self._read_u32()
            if status in (wire.RESULT_FAILED, wire.RESULT_TOO_MANY):
                reason = ""
                if version is Version.V3_8:
                    reason = yield from self._read_reason()
                raise AuthenticationFailed(reason)
            if status != wire.RESULT_OK:
                raise ProtocolError(f"unknown SecurityResult {status}")
        self._finish(security_type, subtype, username)
