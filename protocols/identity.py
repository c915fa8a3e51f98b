"""Terminal identities that cannot be copied: keys, their fingerprints, their proofs.

A terminal with a key proves it on every connection, in one of two ways:

- a TLS client certificate inside VeNCrypt (X509None, X509Vnc, X509Plain):
  the TLS handshake signs its own transcript with the key, so the proof
  cannot be replayed or relayed;
- the browser terminal's WebSocket key proof (``thinserve-key.v1``): the
  server sends a fresh nonce, the page signs it with its non-extractable
  WebCrypto key (ECDSA P-256, SHA-256) and sends the public key and the
  signature back, before RFB starts (see docs/security.md).

Either way, what the connection proved is the SHA-256 fingerprint of the
key's SubjectPublicKeyInfo (DER), written in lower-case base32 without
padding (52 characters).  The terminal id thinserve gives it is
``key-`` followed by the fingerprint's first 26 characters (130 bits).
The certificate itself is not trusted for anything else: any self-signed
certificate will do, and a new certificate for the same key keeps the id.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .terminal_ids import ID_CHARS, KEY_ID_PREFIX, is_key_id

__all__ = ["ID_CHARS", "KEY_ID_PREFIX", "is_key_id"]  # and the functions below

FINGERPRINT_CHARS = 52  # base32 of a SHA-256 digest, without padding
PROOF_CONTEXT = b"thinserve-terminal-key-proof-v1\x00"
NONCE_BYTES = 32
MAX_SPKI_BYTES = 600  # a P-256 SPKI is 91 bytes; RSA-4096 about 550


_BASE32 = set("abcdefghijklmnopqrstuvwxyz234567")


class KeyProofError(ValueError):
    """A key proof is malformed or does not verify; the message says which."""


def fingerprint(spki_der: bytes) -> str:
    """The fingerprint of a public key given as SubjectPublicKeyInfo (DER)."""
    digest = hashlib.sha256(spki_der).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def public_key_fingerprint(key: PublicKeyTypes) -> str:
    """The fingerprint of a ``cryptography`` public key object."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return fingerprint(spki)


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """The fingerprint of the key a certificate carries (not of the certificate)."""
    return public_key_fingerprint(certificate.public_key())


def terminal_id(key_fingerprint: str) -> str:
    """The terminal id for a key: ``key-`` and the fingerprint's first 26 characters."""
    if not is_fingerprint(key_fingerprint):
        raise ValueError(f"{key_fingerprint!r} is not a key fingerprint")
    return KEY_ID_PREFIX + key_fingerprint[:ID_CHARS]


def is_fingerprint(text: str) -> bool:
    return len(text) == FINGERPRINT_CHARS and all(
        c in "abcdefghijklmnopqrstuvwxyz234567" for c in text
    )


def proof_message(nonce: bytes) -> bytes:
    """What a browser terminal signs: a fixed context, then the server's nonce."""
    return PROOF_CONTEXT + nonce


def verify_key_proof(spki_der: bytes, signature: bytes, nonce: bytes) -> str:
    """Check an ECDSA P-256 / SHA-256 signature of ``proof_message(nonce)``.

    ``signature`` is WebCrypto's form: r and s, 32 bytes each, big-endian.
    Returns the key's fingerprint; raises KeyProofError with a reason.
    """
    if len(nonce) != NONCE_BYTES:
        raise KeyProofError("the nonce is not 32 bytes")
    if not 0 < len(spki_der) <= MAX_SPKI_BYTES:
        raise KeyProofError(f"the public key is empty or over {MAX_SPKI_BYTES} bytes")
    if len(signature) != 64:
        raise KeyProofError("the signature is not 64 bytes (ECDSA P-256, r and s)")
    try:
        key = serialization.load_der_public_key(spki_der)
    except ValueError:
        raise KeyProofError("the public key is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyProofError("the key is not an ECDSA P-256 key")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(
            utils.encode_dss_signature(r, s), proof_message(nonce), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise KeyProofError("the signature does not verify") from None
    return fingerprint(spki_der)
