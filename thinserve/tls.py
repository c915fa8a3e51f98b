"""TLS contexts for VeNCrypt's StartTLS, for Twisted's ``transport.startTLS``.

Anonymous contexts (VeNCrypt TLS* subtypes) use anonymous Diffie-Hellman
cipher suites, which only exist up to TLS 1.2 and only at OpenSSL security
level 0; they give encryption without authenticating the server.  X.509
contexts (X509* subtypes) are ordinary certificate-based TLS 1.2+.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer

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


@implementer(IOpenSSLContextFactory)
class AnonymousContextFactory:
    """Anonymous (EC)DH TLS 1.2, as VeNCrypt's TLSNone/TLSVnc/TLSPlain use."""

    def __init__(self, server: bool) -> None:
        self.server = server
        self._context: SSL.Context | None = None

    def getContext(self) -> SSL.Context:
        if self._context is None:
            self._context = self._make_context()
        return self._context

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
) -> IOpenSSLContextFactory:
    """Context factory for the server side of a VeNCrypt StartTLS.

    ``anonymous`` ignores the certificate.  Otherwise ``cert_file`` holds the
    PEM certificate (optionally followed by its chain) and ``key_file`` the
    PEM private key (default: ``cert_file``).
    """
    if anonymous:
        return AnonymousContextFactory(server=True)
    if cert_file is None:
        raise ValueError("X.509 TLS needs a certificate file")
    chain = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    key = serialization.load_pem_private_key(Path(key_file or cert_file).read_bytes(), None)
    # pyOpenSSL takes cryptography's objects directly (its own are deprecated).
    # TLS 1.2 at most: TigerVNC viewers (seen with 1.12) stall when the TLS 1.3
    # session tickets and the first RFB bytes after the handshake arrive together.
    return ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        lowerMaximumSecurityTo=ssl.TLSVersion.TLSv1_2,
    )


def client_context_factory(
    anonymous: bool, ca_file: str | None = None, verify_hostname: str | None = None
) -> object:
    """Context factory (or connection creator) for the client side.

    X.509: the server's certificate must chain to ``ca_file`` (PEM, one or
    more certificates; the platform's trust store when None) and, when
    ``verify_hostname`` is given, name that host.
    """
    if anonymous:
        return AnonymousContextFactory(server=False)
    trust = _trust_root(ca_file)
    if verify_hostname is not None:
        return ssl.optionsForClientTLS(verify_hostname, trustRoot=trust)
    return ssl.CertificateOptions(trustRoot=trust, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def _trust_root(ca_file: str | None) -> object:
    if ca_file is None:
        return ssl.platformTrust()
    certificates = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
    return ssl.trustRootFromCertificates(
        [ssl.Certificate(crypto.X509.from_cryptography(cert)) for cert in certificates]
    )


def make_self_signed(cert_path: str, key_path: str, hostname: str) -> None:
    """Write a new self-signed certificate for ``hostname`` and its key (PEM).

    The key file is created readable by its owner only.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([_general_name(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(key_path, key_pem)
    Path(cert_path).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _general_name(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
