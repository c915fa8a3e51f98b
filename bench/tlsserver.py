"""The TLS benchmark's thinserve and keys: one process offering None and X509None.

thinserve offers a loopback peer security type None first, then VeNCrypt's
X.509 subtypes, with the certificate of ``[server] tls_cert``/``tls_key``.
The benchmark makes that certificate (``thinserve.tls.make_self_signed``)
and a terminal's key and self-signed client certificate (EC P-256, as the
software terminal makes), starts thinserve with the certificate in its
configuration and checks, before measuring, that it offers both.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from thinserve.rfbclient import ClientOptions
from thinserve.tls import make_self_signed, self_signed

from . import processes
from .xvnc import XvncError

PATHS = ("None", "X509None")
SOURCE = "127.0.0.2"  # the terminals' address (loopback: None is offered)


@dataclass(frozen=True)
class Keys:
    server_cert: str  # PEM files, for thinserve's configuration
    server_key: str
    client_certificate: x509.Certificate  # the terminal's, self-signed
    client_key: ec.EllipticCurvePrivateKey


def make_keys(folder: Path) -> Keys:
    server_cert, server_key = str(folder / "server.crt"), str(folder / "server.key")
    make_self_signed(server_cert, server_key, "127.0.0.1")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed(key, "bench-terminal", days=30)  # a terminal's client certificate
    return Keys(server_cert, server_key, certificate, key)


def can_present_certificate() -> bool:
    """Whether thinserve's RFB client can present a client certificate."""
    return "client_certificate" in {f.name for f in dataclasses.fields(ClientOptions)}


def client_options(path: str, keys: Keys) -> ClientOptions:
    """The terminal's security for a path: None, or X509None pinning the
    server's certificate and presenting the terminal's own (when it can)."""
    if path == "None":
        return ClientOptions(methods=(SecurityType.NONE,))
    identity: dict[str, object] = {}
    if can_present_certificate():
        from thinserve.tls import ClientCertificate

        certificate = ClientCertificate(keys.client_certificate, keys.client_key)
        identity = {"client_certificate": certificate}
    return ClientOptions(
        methods=(VeNCryptSubtype.X509_NONE,),
        ca_file=keys.server_cert,
        **identity,  # type: ignore[arg-type]
    )


def offered_types(port: int) -> list[int]:
    """The top-level security types thinserve offers a terminal at SOURCE (RFB 3.8)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(SOURCE, 0)) as s:
        file = s.makefile("rwb")
        file.read(12)
        file.write(b"RFB 003.008\n")
        file.flush()
        count = file.read(1)[0]
        return list(file.read(count))


class Server:
    """thinserve offering None and X509None; both paths reach it on one port."""

    def __init__(self, desktop: tuple[str, int], keys: Keys, folder: Path) -> None:
        self.desktop = desktop
        self.keys = keys
        self.folder = folder  # for its configuration file
        self.process: processes.ServerProcess | None = None

    def start(self) -> None:
        lines = (f'tls_cert = "{self.keys.server_cert}"', f'tls_key = "{self.keys.server_key}"')
        self.process = processes.thinserve([self.desktop], self.folder, server=lines)
        self.process.start()
        types = offered_types(self.process.port)
        if SecurityType.NONE not in types or SecurityType.VENCRYPT not in types:
            self.process.stop()
            raise XvncError(
                f"thinserve offers a loopback terminal security types {types}; this benchmark "
                f"needs None ({SecurityType.NONE}) and VeNCrypt ({SecurityType.VENCRYPT}): "
                "see [server] allow_none, tls_cert and tls_key in docs/configuration.md"
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    # relay.Reach: both paths go to the same thinserve
    def port(self, path: str) -> int:
        assert self.process is not None
        return self.process.port

    def server(self, path: str) -> processes.ServerProcess | None:
        return self.process
