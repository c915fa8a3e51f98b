"""What the terminal port offers each peer, and the server's own certificate.

Beyond loopback every link is encrypted and the server authenticated: the
terminal port offers VeNCrypt's X.509 subtypes only, so a viewer gets TLS
with thinserve's certificate (which it can pin by fingerprint), a terminal
with a key proves it with a client certificate, and a user name and
password typed into a viewer's own dialog travel inside TLS.  Security type
None (or VNC Authentication, with a site password) is offered only where
``allow_none`` says: on loopback by default.  Anonymous TLS is never
offered: it encrypts but does not say who the server is.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography import x509

from protocols.identity import certificate_fingerprint
from protocols.rfb.constants import SecurityType, VeNCryptSubtype

from .tls import make_self_signed

log = logging.getLogger(__name__)

ALLOW_NONE_CHOICES = ("loopback", "all", "no")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address as a transport reports it) is this machine."""
    text = host.strip().strip("[]").split("%")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return host in ("", "local")  # Unix sockets and in-process transports
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@dataclass(frozen=True)
class SecurityPolicy:
    """The security methods the terminal port offers, per peer address."""

    allow_none: str = "loopback"
    password: bool = False  # a site password: VNC Authentication, X509Vnc
    logins: bool = False  # hot-desk users may log in with X509Plain

    def methods_for(self, host: str) -> tuple[int, ...]:
        """Methods for a peer at ``host``, in the order offered."""
        x509 = [VeNCryptSubtype.X509_VNC if self.password else VeNCryptSubtype.X509_NONE]
        if self.logins:
            x509.insert(0, VeNCryptSubtype.X509_PLAIN)
        plain = SecurityType.VNC_AUTH if self.password else SecurityType.NONE
        if self.allow_none == "all" or (self.allow_none == "loopback" and is_loopback(host)):
            return (plain, *x509)  # viewers choose in the server's order: unchanged on loopback
        return tuple(x509)


@dataclass(frozen=True)
class ServerCertificate:
    """thinserve's certificate and key (PEM files) and the key's fingerprint."""

    cert_file: str
    key_file: str

    @cached_property
    def fingerprint(self) -> str:
        chain = x509.load_pem_x509_certificates(Path(self.cert_file).read_bytes())
        return certificate_fingerprint(chain[0])

    @classmethod
    def ensure(cls, directory: Path) -> ServerCertificate:
        """The certificate kept in ``directory``, made there on first use."""
        cert, key = directory / "server.crt", directory / "server.key"
        if not (cert.exists() and key.exists()):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            host, *names = this_host_names()
            make_self_signed(str(cert), str(key), host, names)
            log.info("made a new server certificate %s for %s", cert, ", ".join([host, *names]))
        return cls(str(cert), str(key))

    @classmethod
    def for_database(cls, database: str) -> ServerCertificate:
        """The generated certificate kept beside the database (tls/ next to it).

        An in-memory database (tests, benchmarks) gets one certificate per
        process, in a temporary directory removed when the process exits.
        """
        if database == ":memory:":
            return cls.ensure(_process_tls_dir())
        return cls.ensure(Path(os.path.dirname(os.path.abspath(database))) / "tls")


_process_tls: list[Path] = []  # the temporary certificate directory of this process, once made


def _process_tls_dir() -> Path:
    if not _process_tls:
        made = Path(tempfile.mkdtemp(prefix="thinserve-tls-"))
        atexit.register(shutil.rmtree, made, ignore_errors=True)
        _process_tls.append(made)
    return _process_tls[0]


def this_host_names() -> list[str]:
    """What viewers may call this machine: its host name (and its mDNS
    name), localhost, and its addresses now.  Viewers such as TigerVNC's
    check that the certificate names the host they connected to."""
    from .discovery import local_addresses  # ifaddr: imported only when a certificate is made

    host = socket.gethostname() or "thinserve"
    names = [host, f"{host.split('.')[0]}.local", "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys([*names, *local_addresses()]))


def https_description(description: str, certificate: ServerCertificate) -> str | None:
    """The TLS form of a ``tcp:`` listening endpoint beyond loopback; None for
    one on loopback (or not ``tcp:``), which stays as it is."""
    if not description.startswith("tcp:"):
        return None
    fields = _fields(description[4:])
    if is_loopback(fields.get("interface", "0.0.0.0")):
        return None
    cert = _escape(certificate.cert_file)
    key = _escape(certificate.key_file)
    return f"ssl:{description[4:]}:privateKey={key}:certKey={cert}"


def _fields(text: str) -> dict[str, str]:
    """``key=value`` fields of a Twisted endpoint description (``\\:`` escapes a colon)."""
    parts = re.split(r"(?<!\\):", text)
    fields = {}
    for part in parts:
        name, _, value = part.partition("=")
        if value:
            fields[name] = value.replace("\\:", ":")
    return fields


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
