"""thinserve's configuration: a TOML file, validated, with embedded defaults.

See docs/configuration.md for every key.  With no file, thinserve serves one
local Xvnc desktop to terminals connecting to 127.0.0.1:5900.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.rfb.constants import Encoding

from .broker import BrokerConfig
from .broker.config import from_table as broker_from_table
from .config_reader import ConfigError as ConfigError  # the config file's one error type
from .config_reader import Table
from .desktop_config import DesktopSetup
from .desktop_config import read as read_desktops
from .linksecurity import ALLOW_NONE_CHOICES

ENCODING_NAMES = {
    "raw": Encoding.RAW,
    "copyrect": Encoding.COPYRECT,
    "rre": Encoding.RRE,
    "hextile": Encoding.HEXTILE,
    "zlib": Encoding.ZLIB,
    "tight": Encoding.TIGHT,
    "zrle": Encoding.ZRLE,
}

ENDPOINTS_EXAMPLE = '["tcp:5900"]'
MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


@dataclass(frozen=True)
class DesktopConfig:
    """A desktop whose VNC console already exists somewhere."""

    name: str
    address: str  # host:port, [v6]:port or unix:/path
    password: str | None = None
    username: str | None = None
    ca_file: str | None = None
    encodings: tuple[int, ...] | None = None

    @property
    def endpoint(self) -> str:
        return address_to_endpoint(self.address)


@dataclass(frozen=True)
class LocalDesktopConfig:
    """An Xvnc desktop session thinserve starts on this machine."""

    name: str
    geometry: str = "1280x800"
    command: str | None = None  # None: the first session program found


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = ("tcp:port=5900:interface=127.0.0.1",)
    # The browser terminal (noVNC over WebSocket); () turns it off.
    web_listen: tuple[str, ...] = ("tcp:port=5800:interface=127.0.0.1",)
    web_allowed_origins: tuple[str, ...] = ()
    dial: tuple[str, ...] = ()  # listening viewers thinserve connects to (host[:port])
    name: str = "thinserve"
    password: str | None = None
    database: str | None = None  # None: the default path (see thinserve.store)
    # The admin API's Unix socket: None for the runtime directory's admin.sock,
    # "" for no admin API (see docs/admin.md).
    admin_socket: str | None = None
    # Link security (docs/security.md): the server's certificate (None: one
    # thinserve makes beside its database), where security type None is
    # accepted, and the subnets whose keyless viewers are known by address.
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_none: str = "loopback"
    address_pairing: tuple[str, ...] = ()
    # Guessing and floods (docs/security.md): failures per source before it
    # waits, and the first wait (doubling); connection caps.
    blacklist_threshold: int = 5
    blacklist_timeout: float = 10.0
    max_connections: int = 1000
    max_per_address: int = 16
    max_unpaired: int = 200
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    discovery: bool = True  # browse for terminals, advertise _rfb._tcp
    discovery_interfaces: tuple[str, ...] = ()  # () = all
    desktops: tuple[DesktopConfig, ...] = ()
    setup: DesktopSetup = field(default_factory=DesktopSetup)  # VMs, sessions, pools
    local_desktops: tuple[LocalDesktopConfig, ...] = field(
        default_factory=lambda: (LocalDesktopConfig("desktop-1"),)
    )
    source: str = "embedded defaults"


def load(path: str | Path | None) -> Config:
    """The configuration in ``path``, or the embedded defaults when None."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; see docs/configuration.md") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, str(path))


def from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """The configuration in ``data``, a parsed file named ``source``.

    Every table is read first (types and ranges), then unknown keys are
    refused, then the desktops are checked against each other.
    """
    root = Table(data, source)
    config = _read(root)
    root.done()
    _check_desktops(config)
    return config


def _read(root: Table) -> Config:
    setup = read_desktops(root)
    desktops = tuple(_desktop(t) for t in root.tables("desktop"))
    local = tuple(_local(t) for t in root.tables("local_desktop"))
    broker = broker_from_table(root.table("broker"))
    server, discovery = root.table("server"), root.table("discovery")
    tls_cert, tls_key = _tls_files(server)
    config = Config(
        listen=server.texts("listen", Config.listen, ENDPOINTS_EXAMPLE, allow_empty=False),
        web_listen=server.texts("web_listen", Config.web_listen, ENDPOINTS_EXAMPLE),
        web_allowed_origins=server.texts("web_allowed_origins", (), '["https://desk.example"]'),
        dial=_dial(server),
        name=server.text("name", Config.name),
        password=server.optional_text("password"),
        database=server.optional_text("database"),
        admin_socket=_admin_socket(server),
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_none=server.choice("allow_none", Config.allow_none, ALLOW_NONE_CHOICES),
        address_pairing=_subnets(server),
        blacklist_threshold=server.whole(
            "blacklist_threshold", Config.blacklist_threshold, 1, 1000
        ),
        blacklist_timeout=server.number("blacklist_timeout", Config.blacklist_timeout, 1, 86400),
        max_connections=server.whole("max_connections", Config.max_connections, 1, 100_000),
        max_per_address=server.whole("max_per_address", Config.max_per_address, 1, 100_000),
        max_unpaired=server.whole("max_unpaired", Config.max_unpaired, 1, 100_000),
        broker=broker,
        discovery=discovery.flag("enabled", True),
        discovery_interfaces=discovery.texts("interfaces", (), '["eth0"]'),
        desktops=desktops,
        local_desktops=local,
        setup=setup,
        source=root.source,
    )
    server.done()
    discovery.done()
    return config


def _check_desktops(config: Config) -> None:
    """At least one desktop, each name once, and pools made of known desktops."""
    names = [d.name for d in config.desktops] + [d.name for d in config.local_desktops]
    names += config.setup.names
    if not names and not config.setup.libvirt:
        raise ConfigError(
            f"{config.source}: no desktops; add [[desktop]], [[local_desktop]], "
            "[[xvnc_desktop]], [[qemu_desktop]] or [[libvirt]]"
        )
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise ConfigError(f"{config.source}: two desktops are named {twice!r}; names must differ")
    every_domain = any(not lc.domains for lc in config.setup.libvirt)  # names not known yet
    for pool, members in config.broker.pools.items():
        unknown = [m for m in members if m not in names]
        if unknown and not every_domain:
            raise ConfigError(
                f"{config.source} [broker] pool {pool!r} names unknown desktops {unknown}; "
                f"configured: {', '.join(names)}"
            )


def _tls_files(server: Table) -> tuple[str | None, str | None]:
    """The server's own certificate and key, both or neither (docs/security.md)."""
    cert, key = server.optional_text("tls_cert"), server.optional_text("tls_key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{server.where}: give both tls_cert and tls_key (PEM files), or neither")
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.path.isabs(path):
            raise server.error(name, "give an absolute path", path)
    return cert, key


def _subnets(server: Table) -> tuple[str, ...]:
    """Where keyless viewers are known by their address."""
    subnets = server.texts("address_pairing", (), '["10.1.2.0/24"]')
    for subnet in subnets:
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise server.error(
                "address_pairing", f'{subnet!r} is not a subnet such as "10.1.2.0/24"'
            ) from None
    return subnets


def _dial(server: Table) -> tuple[str, ...]:
    from .viewers import ViewerAddressError, listening_viewer

    addresses = server.texts("dial", (), '["10.1.2.3:5500"]')
    for address in addresses:
        try:
            listening_viewer(address)
        except ViewerAddressError as exc:
            raise server.error("dial", str(exc)) from None
    return addresses


def _admin_socket(server: Table) -> str | None:
    path = server.optional_text("admin_socket")
    if not path:
        return path
    if not path.startswith("/"):
        raise server.error(
            "admin_socket",
            'give an absolute path, e.g. "/run/thinserve/admin.sock", or "" to turn the '
            "admin API off",
            path,
        )
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise server.error("admin_socket", f"at most {MAX_SOCKET_PATH} bytes (a Unix socket limit)")
    return path


def _desktop(table: Table) -> DesktopConfig:
    desktop = table.build(DesktopConfig, {tuple[int, ...]: _encodings})
    _check_name(table, desktop.name)
    address_to_endpoint(desktop.address, f"{table.where} address")
    return desktop


def _encodings(table: Table, key: str) -> tuple[int, ...]:
    """The encodings to ask the desktop for, by name, preferred first."""
    names = table.texts(key, (), '["tight", "zrle"]', allow_empty=False)
    unknown = [n for n in names if n not in ENCODING_NAMES]
    if unknown:
        raise table.error(key, f"unknown {unknown}; known: {', '.join(ENCODING_NAMES)}")
    return tuple(ENCODING_NAMES[n] for n in names)


def _local(table: Table) -> LocalDesktopConfig:
    local = table.build(LocalDesktopConfig)
    _check_name(table, local.name)
    if not re.fullmatch(r"\d{2,5}x\d{2,5}", local.geometry):
        raise table.error("geometry", "write WIDTHxHEIGHT, e.g. 1280x800", local.geometry)
    return local


def _check_name(table: Table, name: str) -> None:
    if not name:
        raise table.error("name", "give a non-empty string")


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def address_to_endpoint(address: str, where: str = "address") -> str:
    """A Twisted client endpoint for ``host:port``, ``[v6]:port`` or ``unix:/path``."""
    if address.startswith("unix:"):
        path = address[5:]
        if not path.startswith("/"):
            raise ConfigError(
                f"{where}: unix sockets need an absolute path, e.g. unix:/run/vm.sock"
            )
        return "unix:path=" + path.replace(":", "\\:")
    match = _HOST_PORT.match(address)
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(f"{where}: {address!r} is not host:port, [ipv6]:port or unix:/path")
    host = match["v6"] or match["host"]
    return f"tcp:host={host.replace(':', chr(92) + ':')}:port={match['port']}"
