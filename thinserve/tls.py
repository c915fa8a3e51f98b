"""TLS contexts for VeNCrypt's StartTLS, for Twisted's ``transport.startTLS``.

Anonymous contexts (VeNCrypt TLS* subtypes) use anonymous Diffie-Hellman
cipher suites, which only exist up to TLS 1.2 and only at OpenSSL security
level 0; they give encryption without authenticating the server.  X.509
contexts (X509* subtypes) are ordinary certificate-based TLS 1.2+.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

from protocols.identity import certificate_fingerprint

if TYPE_CHECKING:
    # Twisted's own signatures name IOpenSSLTrustRoot from here (twisted.internet.ssl does not).
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

# Anonymous suites: AES-GCM with finite-field DH first, then ECDH (which
# OpenSSL only has with AES-CBC), then DH with AES-CBC.
ANONYMOUS_CIPHERS = b"ADH+AESGCM:AECDH+AES:ADH+AES:!CAMELLIA:@SECLEVEL=0"

# RFC 7919 ffdhe2048 group, for the finite-field anonymous suites.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

_ANONYMOUS_OPTIONS = (
    SSL.OP_NO_COMPRESSION
    | SSL.OP_CIPHER_SERVER_PREFERENCE
    | SSL.OP_SINGLE_DH_USE
    | SSL.OP_SINGLE_ECDH_USE
    | SSL.OP_NO_TICKET
)

# Twisted leaves these unannotated; the types are the ones its documentation gives.
_platform_trust = cast("Callable[[], IOpenSSLTrustRoot]", ssl.platformTrust)
_trust_certificates = cast(
    "Callable[[list[ssl.Certificate]], IOpenSSLTrustRoot]", ssl.trustRootFromCertificates
)
_certificate = cast("Callable[[crypto.X509], ssl.Certificate]", ssl.Certificate)
_key_pair = cast("Callable[[crypto.PKey], ssl.KeyPair]", ssl.KeyPair)
_private_certificate_of = cast(
    "Callable[[ssl.Certificate, ssl.KeyPair], ssl.PrivateCertificate]",
    ssl.PrivateCertificate.fromCertificateAndKeyPair,
)


class ContextFactory(Protocol):
    """A context factory (IOpenSSLContextFactory) for ``transport.startTLS``.

    The classes here declare the zope interface too, which Twisted checks
    at run time; mypy only sees this Protocol.
    """

    def getContext(self) -> SSL.Context: ...


if TYPE_CHECKING:
    # What ``transport.startTLS`` takes on the client side.
    TLSContext: TypeAlias = ContextFactory | IOpenSSLClientConnectionCreator


class _BuiltOnce:
    """An OpenSSL context made on first use and kept: every connection of
    the factory shares it."""

    _context: SSL.Context | None = None

    def getContext(self) -> SSL.Context:
        if self._context is None:
            self._context = self._make_context()
        return self._context

    def _make_context(self) -> SSL.Context:
        raise NotImplementedError


@implementer(IOpenSSLContextFactory)
class AnonymousContextFactory(_BuiltOnce):
    """Anonymous (EC)DH TLS 1.2, as VeNCrypt's TLSNone/TLSVnc/TLSPlain use."""

    def __init__(self, server: bool) -> None:
        self.server = server

    def _make_context(self) -> SSL.Context:
        method = SSL.TLS_SERVER_METHOD if self.server else SSL.TLS_CLIENT_METHOD
        context = SSL.Context(method)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(_ANONYMOUS_OPTIONS)
        context.set_cipher_list(ANONYMOUS_CIPHERS)
        context.set_verify(SSL.VERIFY_NONE)
        if self.server:
            _load_dh_params(context)
        return context


def _load_dh_params(context: SSL.Context) -> None:
    """Install the ffdhe2048 group (pyOpenSSL loads DH parameters from a file)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ffdhe2048.pem"
        path.write_bytes(FFDHE2048_PEM)
        context.load_tmp_dh(str(path).encode())


def server_context_factory(
    anonymous: bool, cert_file: str | None = None, key_file: str | None = None
) -> ContextFactory:
    """Context factory for the server side of a VeNCrypt StartTLS.

    ``anonymous`` ignores the certificate.  Otherwise ``cert_file`` holds the
    PEM certificate (optionally followed by its chain) and ``key_file`` the
    PEM private key (default: ``cert_file``).  X.509 contexts ask the client
    for a certificate and take any: it proves the client's key (a
    terminal's identity, protocols/identity.py), nothing more.  The files
    are read once per pair of paths.
    """
    if anonymous:
        return AnonymousContextFactory(server=True)
    if cert_file is None:
        raise ValueError("X.509 TLS needs a certificate file")
    return _x509_server(cert_file, key_file or cert_file)


@functools.lru_cache(maxsize=8)
def _x509_server(cert_file: str, key_file: str) -> ContextFactory:
    chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
    # pyOpenSSL takes cryptography's objects directly (its own are deprecated).
    # TLS 1.2 at most: TigerVNC viewers (seen with 1.12) stall when the TLS 1.3
    # session tickets and the first RFB bytes after the handshake arrive together.
    options = ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
    )
    context = options.getContext()
    context.set_verify(SSL.VERIFY_PEER, _any_client_certificate)
    # Session ids must be set for OpenSSL to resume sessions with client certificates.
    context.set_session_id(b"thinserve")
    return _FixedContext(context)


def _any_client_certificate(
    connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
) -> bool:
    """Accept every client certificate (or none): only its key is used, as an identity."""
    return True


@implementer(IOpenSSLContextFactory)
class _FixedContext:
    def __init__(self, context: SSL.Context) -> None:
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate and its private key, shown to servers that ask for one.

    thinserve takes any client certificate as proof of its key (see
    protocols/identity.py), so a self-signed one made at start will do.
    """

    certificate: x509.Certificate
    key: PrivateKey


class ServerRefused(Exception):
    """The server's certificate is not trusted; the message says why and what to do."""


class ServerCheck(Protocol):
    """Decides whether one connection trusts the server's certificate (X509 subtypes)."""

    def check(self, certificate: x509.Certificate, trusted: bool) -> None:
        """Raise ServerRefused to refuse ``certificate`` (the server's own, the
        leaf).  ``trusted``: it chains to the CA file, or is one of its
        certificates (compared by key); always False without a CA file."""

    def confirmed(self, certificate: x509.Certificate) -> None:
        """The handshake finished with this accepted certificate."""


def client_context_factory(
    anonymous: bool,
    ca_file: str | None = None,
    verify_hostname: str | None = None,
    *,
    client_certificate: ClientCertificate | None = None,
    server_check: ServerCheck | None = None,
) -> TLSContext:
    """Context factory (or connection creator) for the client side.

    X.509: the server's certificate must chain to ``ca_file`` (PEM, one or
    more certificates; the platform's trust store when None) and, when
    ``verify_hostname`` is given, name that host.  With ``server_check``,
    that object decides instead (``verify_hostname`` is not used): see
    CheckedClientContext.  ``client_certificate`` is shown to the server
    when it asks (anonymous TLS has no certificates at all).
    """
    if anonymous:
        return AnonymousContextFactory(server=False)
    if server_check is not None:
        return CheckedClientContext(server_check, ca_file, client_certificate)
    trust = _trust_root(ca_file)
    if verify_hostname is not None:
        return ssl.optionsForClientTLS(
            verify_hostname,
            trustRoot=trust,
            clientCertificate=_private_certificate(client_certificate),
        )
    identity: dict[str, object] = {}
    if client_certificate is not None:
        identity = {
            "privateKey": client_certificate.key,
            "certificate": client_certificate.certificate,
        }
    return ssl.CertificateOptions(
        trustRoot=trust,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **identity,  # type: ignore[arg-type]
    )


def _private_certificate(identity: ClientCertificate | None) -> ssl.PrivateCertificate | None:
    if identity is None:
        return None
    return _private_certificate_of(
        _certificate(crypto.X509.from_cryptography(identity.certificate)),
        _key_pair(crypto.PKey.from_cryptography_key(identity.key)),
    )


def _trust_root(ca_file: str | None) -> IOpenSSLTrustRoot:
    if ca_file is None:
        return _platform_trust()
    certificates = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    return _trust_certificates(
        [_certificate(crypto.X509.from_cryptography(cert)) for cert in certificates]
    )


def load_ca_file(ca_file: str) -> list[x509.Certificate]:
    """The PEM certificates in ``ca_file``; ValueError (OSError) with the file's name."""
    try:
        certificates = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    except ValueError as exc:
        raise ValueError(f"{ca_file} holds no PEM certificate ({exc})") from None
    return certificates


@implementer(IOpenSSLContextFactory)
class CheckedClientContext(_BuiltOnce):
    """The client context of one connection whose server ``server_check`` judges.

    With ``ca_file`` OpenSSL first checks the server's chain against its
    certificates; the check is told whether the server is ``trusted`` that
    way, or because its certificate carries the key of one of the file's
    certificates (a server's own self-signed certificate, pinned).  The
    decision is made in OpenSSL's verify callback, so a refused server
    never completes the handshake (and never sees the client certificate);
    ``handshake_done`` checks again once the handshake is over, before
    anything inside TLS is read, and confirms the certificate to the check.
    """

    def __init__(
        self,
        server_check: ServerCheck,
        ca_file: str | None = None,
        client_certificate: ClientCertificate | None = None,
    ) -> None:
        self.server_check = server_check
        self.pinned = load_ca_file(ca_file) if ca_file is not None else []
        self.client_certificate = client_certificate
        self.certificate: x509.Certificate | None = None  # the server's, once accepted
        self.refusal: str | None = None
        self._chain_errors: list[int] = []

    def _make_context(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        if self.client_certificate is not None:
            context.use_certificate(self.client_certificate.certificate)
            context.use_privatekey(self.client_certificate.key)
            context.check_privatekey()
        store = context.get_cert_store()
        assert store is not None
        for certificate in self.pinned:
            store.add_cert(crypto.X509.from_cryptography(certificate))
        context.set_verify(SSL.VERIFY_PEER, self._verify)
        return context

    def _verify(
        self, connection: SSL.Connection, certificate: crypto.X509, error: int, depth: int, ok: int
    ) -> bool:
        if not ok:
            self._chain_errors.append(error)
        if depth > 0:
            return True  # the server's own certificate, at depth 0, decides
        try:
            leaf = certificate.to_cryptography()
            self.server_check.check(leaf, self.trusted(leaf))
        except ServerRefused as exc:
            self.refusal = str(exc)
            return False
        except Exception as exc:  # nothing may escape OpenSSL's callback
            self.refusal = f"cannot check the server's certificate: {exc}"
            return False
        self.certificate = leaf
        return True

    def trusted(self, certificate: x509.Certificate) -> bool:
        """Whether the CA file vouches for the server's certificate."""
        if not self.pinned:
            return False
        if not self._chain_errors:
            return True
        key = certificate_fingerprint(certificate)
        return any(certificate_fingerprint(pinned) == key for pinned in self.pinned)

    def handshake_done(self, peer: x509.Certificate | None) -> None:
        """Check once more with the handshake's result; ServerRefused if it fails."""
        if self.refusal is not None:
            raise ServerRefused(self.refusal)
        if peer is None or self.certificate is None or peer != self.certificate:
            self.refusal = "the server's certificate was not checked during the TLS handshake"
            raise ServerRefused(self.refusal)
        try:
            self.server_check.check(peer, self.trusted(peer))
            self.server_check.confirmed(peer)
        except ServerRefused as exc:
            self.refusal = str(exc)
            raise
        except Exception as exc:
            self.refusal = f"cannot check the server's certificate: {exc}"
            raise ServerRefused(self.refusal) from exc


def make_self_signed(
    cert_path: str, key_path: str, hostname: str, also: Sequence[str] = ()
) -> None:
    """Write a new self-signed certificate for ``hostname`` (and the names or
    addresses in ``also``) and its key (PEM).

    The key file is created readable by its owner only.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = self_signed(key, hostname, server_names=[hostname, *also])
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    Path(cert_path).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def self_signed(
    key: PrivateKey, common_name: str, server_names: Sequence[str] = (), days: int = 3650
) -> x509.Certificate:
    """A self-signed certificate for ``key``: a server's (its own CA, naming
    ``server_names``) when names are given, else a TLS client's."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    server = bool(server_names)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=server, path_length=0 if server else None), True)
        .add_extension(_key_usage(server), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        unique = dict.fromkeys(server_names)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in unique]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _key_usage(server: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=server,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=server,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
