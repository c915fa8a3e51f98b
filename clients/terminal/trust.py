"""Which servers the terminal trusts: the one ``--ca`` names, or the keys it met first.

With ``--ca FILE`` a server must show a certificate signed by a CA in FILE,
or the very certificate in FILE (compared by key): ``PinnedCA``.  Without
it the terminal trusts a server on first use (``TrustOnFirstUse``): the
fingerprint of the key in the server's certificate
(protocols.identity.certificate_fingerprint) is recorded in
``known_servers``, beside the terminal's key, the first time a TLS
handshake with that server succeeds; from then on a different key is
refused, with a message that names the file to edit.  Servers are told
apart by name: ``HOST:PORT`` when the terminal dials them (connect and find
modes), the name in the certificate when a server dials the terminal
(listen mode).

``known_servers`` is a text file, one server a line::

    # comments and blank lines are kept
    thinserve.lan:5900 sha256:k3tq...

The name is everything before the last space; the fingerprint may be
written with or without ``sha256:``.  The file is read at every
connection, so an edit counts from the next attempt on.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from protocols.identity import certificate_fingerprint, is_fingerprint
from thinserve.tls import ServerRefused

log = logging.getLogger(__name__)

KNOWN_SERVERS = "known_servers"
MAX_FILE_BYTES = 1024 * 1024
MAX_NAME = 128
PREFIX = "sha256:"
HEADER = (
    "# Servers this thinserve terminal trusts, one a line: NAME FINGERPRINT.\n"
    "# Written when the terminal first meets a server; delete a line when that\n"
    "# server's key really changed, and the terminal trusts its new key.\n"
)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def server_name(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address; host names in lower case."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def certificate_name(certificate: x509.Certificate) -> str:
    """The name a server's certificate gives (its common name, else its first
    DNS or IP alternative name), made safe for one line of text."""
    names = [a.value for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        alternatives = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
        names += alternatives.get_values_for_type(x509.DNSName)
        names += [str(a) for a in alternatives.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    for name in names:
        text = " ".join(_UNSAFE.sub("?", str(name)).split())[:MAX_NAME].lower()
        if text:
            return text
    return "unnamed server"


@dataclass
class KnownServers:
    """The ``known_servers`` file: server name -> key fingerprint."""

    path: Path
    _warned: set[str] = field(default_factory=set)

    def entries(self) -> dict[str, str]:
        """Every usable line; for a name given twice the first line counts."""
        found: dict[str, str] = {}
        for number, line in enumerate(self._lines(), 1):
            entry = self._parse(line, number)
            if entry is not None and entry[0] not in found:
                found[entry[0]] = entry[1]
        return found

    def get(self, name: str) -> str | None:
        return self.entries().get(name.lower())

    def add(self, name: str, fingerprint: str) -> None:
        """Record a server, unless it is recorded already (the file is replaced atomically)."""
        name = name.lower()
        if not is_fingerprint(fingerprint) or not name or _UNSAFE.search(name):
            raise ValueError(f"cannot record {name!r} with {fingerprint!r}")
        lines = self._lines()
        if any((e := self._parse(line, 0)) is not None and e[0] == name for line in lines):
            return
        text = "".join(f"{line}\n" for line in lines) if lines else HEADER
        text += f"{name} {PREFIX}{fingerprint}\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)

    def _lines(self) -> list[str]:
        try:
            with self.path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return []
        if len(data) > MAX_FILE_BYTES:
            raise OSError(f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        return data.decode("utf-8", "replace").splitlines()

    def _parse(self, line: str, number: int) -> tuple[str, str] | None:
        text = line.strip()
        if not text or text.startswith("#"):
            return None
        name, _, fingerprint = text.rpartition(" ")
        fingerprint = fingerprint.removeprefix(PREFIX).lower()
        name = name.strip().lower()
        if name and is_fingerprint(fingerprint):
            return name, fingerprint
        if number and line not in self._warned:
            self._warned.add(line)
            log.warning("%s line %d is not NAME FINGERPRINT; ignored", self.path, number)
        return None


class TrustOnFirstUse:
    """A server check (thinserve.tls.ServerCheck): the key a server showed the
    first time is the one it must always show.

    ``name`` is the server's name (``host:port``), or None to take the name
    from its certificate.  ``refusal`` holds status-screen lines once a
    server was refused.
    """

    def __init__(self, known: KnownServers, name: str | None) -> None:
        self.known = known
        self.name = name
        self.refusal: list[str] | None = None

    def _name(self, certificate: x509.Certificate) -> str:
        return self.name or certificate_name(certificate)

    def check(self, certificate: x509.Certificate, trusted: bool) -> None:
        name = self._name(certificate)
        seen = certificate_fingerprint(certificate)
        known = self.known.get(name)
        if known is None or known == seen:
            return
        path = self.known.path
        self.refusal = [
            f"The key of server {name} changed.",
            f"It shows   {PREFIX}{seen}",
            f"Known key  {PREFIX}{known}",
            "If the server really has a new key, delete its line in",
            f"{path}",
            "Otherwise another machine may be posing as the server.",
        ]
        raise ServerRefused(
            f"the key of server {name} is not the one known: it shows {PREFIX}{seen}, "
            f"{path} has {PREFIX}{known}; if the server's key really changed, delete the "
            f"line for {name} in {path} and the terminal will trust the new key"
        )

    def confirmed(self, certificate: x509.Certificate) -> None:
        name = self._name(certificate)
        seen = certificate_fingerprint(certificate)
        if self.known.get(name) is not None:
            return
        try:
            self.known.add(name, seen)
        except (OSError, ValueError) as exc:
            log.warning("cannot record server %s in %s: %s", name, self.known.path, exc)
            return
        log.info(
            "trusting server %s with key %s%s from now on (first use; recorded in %s)",
            name,
            PREFIX,
            seen,
            self.known.path,
        )


class PinnedCA:
    """A server check for ``--ca FILE``: the CA file must vouch for the server."""

    def __init__(self, ca_file: str) -> None:
        self.ca_file = ca_file
        self.refusal: list[str] | None = None

    def check(self, certificate: x509.Certificate, trusted: bool) -> None:
        if trusted:
            return
        seen = certificate_fingerprint(certificate)
        self.refusal = [
            f"The server's certificate does not match --ca {self.ca_file}:",
            "it is neither signed by a CA in that file nor the certificate in it.",
            f"Server key {PREFIX}{seen}",
        ]
        raise ServerRefused(
            f"the server's certificate (key {PREFIX}{seen}) does not match --ca "
            f"{self.ca_file}: it is neither signed by a CA in that file nor the certificate "
            "in it; give the CA or the server's own certificate"
        )

    def confirmed(self, certificate: x509.Certificate) -> None:
        """Nothing to record: the CA file decides every time."""
