"""VNC Authentication (security type 2): DES challenge and response.

The server sends 16 random bytes; the client encrypts them with single DES
in ECB mode, keyed with the password's first 8 bytes (zero padded).  VNC
has always fed the key bytes to DES with their bit order reversed (the
original code took bit 0 as the most significant bit of each key byte), so
every key byte is mirrored before use.
"""

from __future__ import annotations

import hmac
import os

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

CHALLENGE_SIZE = 16
KEY_SIZE = 8

_REVERSED = bytes(int(f"{value:08b}"[::-1], 2) for value in range(256))


def make_challenge() -> bytes:
    return os.urandom(CHALLENGE_SIZE)


def des_key(password: str) -> bytes:
    """The 8-byte DES key VNC derives from a password (bits mirrored)."""
    raw = password.encode("utf-8")[:KEY_SIZE].ljust(KEY_SIZE, b"\x00")
    return raw.translate(_REVERSED)


def encrypt_challenge(password: str, challenge: bytes) -> bytes:
    """The client's response to ``challenge`` (any multiple of 8 bytes)."""
    if len(challenge) % 8:
        raise ValueError("challenge length must be a multiple of 8")
    key = des_key(password)
    # Triple DES with three equal keys is single DES.
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def check_response(password: str, challenge: bytes, response: bytes) -> bool:
    """True if ``response`` answers ``challenge`` for ``password``.

    Compares in constant time.
    """
    if len(challenge) != CHALLENGE_SIZE or len(response) != CHALLENGE_SIZE:
        return False
    return hmac.compare_digest(encrypt_challenge(password, challenge), response)
