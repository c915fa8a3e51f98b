"""Hashing user secrets (passwords, PINs) with Argon2id.

The store only ever sees the encoded hash (``$argon2id$v=19$m=...``), which
carries its own salt and cost parameters, so hashes made with older
parameters keep verifying; ``needs_rehash`` says when one should be
replaced after a successful login.
"""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

MAX_SECRET_BYTES = 1024  # longer input is refused, so nobody can make hashing slow


class SecretHasher:
    """Argon2id with fixed cost parameters.

    The defaults are RFC 9106's second recommended option (64 MiB, 3 passes,
    4 lanes): about 0.1 s per hash on a small server.  Tests pass tiny costs.
    """

    def __init__(self, time_cost: int = 3, memory_cost: int = 65536, parallelism: int = 4) -> None:
        self._hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_cost,
            parallelism=parallelism,
            type=Type.ID,
        )
        self._dummy: str | None = None  # made on first use: hashing costs time

    def hash(self, secret: str) -> str:
        """The encoded Argon2id hash of ``secret`` (ValueError if empty or too long)."""
        if not secret:
            raise ValueError("a secret must not be empty")
        if len(secret.encode()) > MAX_SECRET_BYTES:
            raise ValueError(f"a secret must be at most {MAX_SECRET_BYTES} bytes")
        return self._hasher.hash(secret)

    def verify(self, encoded: str | None, secret: str) -> bool:
        """Whether ``secret`` matches ``encoded``.

        With ``encoded`` None (no such user) a dummy hash is checked, so the
        answer takes as long as for a real user.
        """
        if not secret or len(secret.encode()) > MAX_SECRET_BYTES:
            return False
        if self._dummy is None:
            self._dummy = self._hasher.hash("thinserve-no-such-user")
        try:
            return self._hasher.verify(encoded or self._dummy, secret) and encoded is not None
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(encoded)
        except (InvalidHashError, ValueError):
            return True
