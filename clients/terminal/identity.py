"""The terminal's key: made once, kept in a file, proven on every connection.

thinserve knows a terminal with a key by the key itself (protocols/identity.py):
the terminal id is ``key-`` and the first 26 characters of the key's
fingerprint, and every connection proves the key (the TLS client
certificate of VeNCrypt's X509 subtypes), so another machine cannot take
the terminal's place by claiming its id.  The key must therefore survive
restarts, new addresses and new software: an EC P-256 private key made the
first time the terminal starts and kept as PEM in
``$XDG_CONFIG_HOME/thinserve-terminal/key.pem`` (mode 0600).  The
certificate is made from it at each start, in memory (self-signed, common
name the terminal id): thinserve uses only the key inside it.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from protocols.identity import public_key_fingerprint, terminal_id
from protocols.terminal import AdvertError, parse_id
from thinserve.tls import ClientCertificate, PrivateKey, self_signed

log = logging.getLogger(__name__)

APP_DIR = "thinserve-terminal"
KEY_FILE = "key.pem"
MAX_KEY_BYTES = 64 * 1024  # a P-256 key in PEM is about 240 bytes
CERTIFICATE_DAYS = 3650
KEY_TYPES = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey)


class KeyFileError(ValueError):
    """The key file exists but holds no key the terminal can use."""


def config_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/thinserve-terminal``, with ``~/.config`` as the default home."""
    config = environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / APP_DIR


def default_key_path(environ: Mapping[str, str] = os.environ) -> Path:
    return config_dir(environ) / KEY_FILE


def named_key_path(name: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The key of ``--id NAME``: ``key-NAME.pem`` beside the default key."""
    return config_dir(environ) / f"key-{checked_id(name)}.pem"


def checked_id(text: str) -> str:
    """A name as the advert contract wants ids (lower case); ValueError if it breaks it."""
    try:
        return parse_id(text.strip())
    except AdvertError as exc:
        raise ValueError(exc.reason) from None


@dataclass(frozen=True)
class TerminalKey:
    """The terminal's private key, where it is kept, and what follows from it."""

    path: Path
    private_key: PrivateKey
    label: str | None = None  # the --id name, shown beside the id

    @classmethod
    def load_or_create(cls, path: Path, label: str | None = None) -> TerminalKey:
        return cls(path, load_or_create_key(path), label)

    @cached_property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.private_key.public_key())

    @property
    def terminal_id(self) -> str:
        return terminal_id(self.fingerprint)

    @property
    def shown_id(self) -> str:
        """The id with the --id name, for the status screen and the log."""
        return self.terminal_id if self.label is None else f"{self.terminal_id} ({self.label})"

    def client_certificate(self) -> ClientCertificate:
        """A new self-signed certificate for the key (only the key counts)."""
        return ClientCertificate(
            make_client_certificate(self.private_key, self.terminal_id), self.private_key
        )


def load_or_create_key(path: Path) -> PrivateKey:
    """The key stored at ``path``; a new EC P-256 key is made and stored if there is none.

    The new key is written to a private temporary file and linked into
    place, so the file is never seen half-written, and when two processes
    start at once the first key stored wins for both.  A file that exists
    but holds no usable key raises KeyFileError: it is never overwritten
    (the terminal's identity would silently change).
    """
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = ec.generate_private_key(ec.SECP256R1())
    pem = fresh.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            log.info("made a new terminal key in %s", path)
        except FileExistsError:
            pass  # another process stored its key first: that one counts
    finally:
        temporary.unlink(missing_ok=True)
    stored = _read(path)
    if stored is None:
        raise OSError(f"cannot keep a terminal key in {path}")
    return stored


def _read(path: Path) -> PrivateKey | None:
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read(MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > MAX_KEY_BYTES:
        raise KeyFileError(_unusable(path, f"it is larger than {MAX_KEY_BYTES} bytes"))
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(_unusable(path, f"no unencrypted PEM private key: {exc}")) from None
    if not isinstance(key, KEY_TYPES):
        kind = type(key).__name__
        raise KeyFileError(_unusable(path, f"a {kind}, not an EC, RSA or Ed25519 key"))
    if stat.S_IMODE(mode) & 0o077:
        log.warning("the terminal key %s can be read by others: chmod 600 it", path)
    return key


def _unusable(path: Path, why: str) -> str:
    return (
        f"the terminal key {path} is unusable ({why}); move it away to make a new key "
        "(the terminal then has a new id and must be paired again)"
    )


def make_client_certificate(key: PrivateKey, common_name: str) -> x509.Certificate:
    """A self-signed TLS client certificate for ``key``."""
    return self_signed(key, common_name, days=CERTIFICATE_DAYS)
