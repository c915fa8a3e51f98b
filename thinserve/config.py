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

from .backends.accounts import default_desktop_user
from .backends.xvnc_config import USER_PATTERN
from .broker import BrokerConfig
from .broker.config import from_table as broker_from_table
from .cluster.config import ClusterConfig
from .cluster.config import from_table as cluster_from_table
from .config_reader import ConfigError as ConfigError  # the config file's one error type
from .config_reader import Table
from .desktop_config import DesktopSetup
from .desktop_config import read as read_desktops
from .linksecurity import ALLOW_NONE_CHOICES
from .paths import (
    ADMIN_SOCKET_NAME,
    DATABASE_NAME,
    default_runtime_dir,
    default_state_dir,
    runtime_dir_in,
)

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
    """An Xvnc desktop session thinserve starts on this machine.

    ``user``: the Unix account the session runs as (None: thinserve's own);
    never root.  ``command``: None runs the default session (IceWM and a
    terminal, see docs/desktops.md).
    """

    name: str
    geometry: str = "1280x800"
    command: str | None = None
    user: str | None = None


@dataclass(frozen=True)
class Config:
    listen: tuple[str, ...] = ("tcp:port=5900:interface=127.0.0.1",)
    # The browser terminal (noVNC over WebSocket); () turns it off.
    web_listen: tuple[str, ...] = ("tcp:port=5800:interface=127.0.0.1",)
    web_allowed_origins: tuple[str, ...] = ()
    # The admin dashboard and its HTTP API (docs/dashboard.md); () turns it off.
    dashboard_listen: tuple[str, ...] = ("tcp:port=5880:interface=127.0.0.1",)
    dial: tuple[str, ...] = ()  # listening viewers thinserve connects to (host[:port])
    name: str = "thinserve"
    password: str | None = None
    # A path, sqlite:///path or postgresql://user@host/db; None: the default path
    # (see thinserve.store.location).
    database: str | None = None
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
    # This node of a site sharing a PostgreSQL database (docs/scale-out.md).
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    discovery: bool = True  # browse for terminals, advertise _rfb._tcp
    discovery_interfaces: tuple[str, ...] = ()  # () = all
    desktops: tuple[DesktopConfig, ...] = ()
    setup: DesktopSetup = field(default_factory=DesktopSetup)  # VMs, sessions, pools
    local_desktops: tuple[LocalDesktopConfig, ...] = field(
        # As root (or with CAP_SETUID+CAP_SETGID) the unprivileged thinserve-desktop.
        default_factory=lambda: (LocalDesktopConfig("desktop-1", user=default_desktop_user()),)
    )
    # What survives a restart (database, certificate, desktop records, lock)
    # and what does not (sockets); see thinserve.paths.
    state_dir: Path = field(default_factory=default_state_dir)
    runtime_dir: Path = field(default_factory=default_runtime_dir)
    # Stop the desktops thinserve started when it stops; otherwise they keep
    # running and the next start finds them again.
    stop_desktops: bool = False
    source: str = "embedded defaults"

    @property
    def database_path(self) -> str:
        """The database: ``database`` when set, else state_dir/thinserve.db."""
        return self.database or str(self.state_dir / DATABASE_NAME)

    @property
    def admin_socket_path(self) -> Path | None:
        """The admin socket: ``admin_socket``, else runtime_dir/admin.sock; None when off."""
        if self.admin_socket == "":
            return None
        return (
            Path(self.admin_socket) if self.admin_socket else self.runtime_dir / ADMIN_SOCKET_NAME
        )


def load(path: str | Path | None, state_dir: Path | None = None) -> Config:
    """The configuration in ``path``, or the embedded defaults when None.

    ``state_dir`` (``serve --state-dir``) overrides the file's, and puts the
    runtime directory inside it unless the file names one.
    """
    if path is None:
        if state_dir is None:
            return Config()
        return Config(state_dir=state_dir, runtime_dir=runtime_dir_in(state_dir))
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; see docs/configuration.md") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data, str(path), state_dir)


def from_dict(
    data: dict[str, Any], source: str = "config", state_dir: Path | None = None
) -> Config:
    """The configuration in ``data``, a parsed file named ``source``.

    Every table is read first (types and ranges), then unknown keys are
    refused, then the desktops are checked against each other.
    """
    root = Table(data, source)
    config = _read(root, state_dir)
    root.done()
    _check_desktops(config)
    return config


def _read(root: Table, state_dir: Path | None) -> Config:
    setup = read_desktops(root)
    desktops = tuple(_desktop(t) for t in root.tables("desktop"))
    local = tuple(_local(t) for t in root.tables("local_desktop"))
    broker = broker_from_table(root.table("broker"))
    server, discovery = root.table("server"), root.table("discovery")
    tls_cert, tls_key = _tls_files(server)
    state, runtime = _directories(server, state_dir)
    config = Config(
        listen=server.texts("listen", Config.listen, ENDPOINTS_EXAMPLE, allow_empty=False),
        web_listen=server.texts("web_listen", Config.web_listen, ENDPOINTS_EXAMPLE),
        web_allowed_origins=server.texts("web_allowed_origins", (), '["https://desk.example"]'),
        dashboard_listen=server.texts(
            "dashboard_listen", Config.dashboard_listen, ENDPOINTS_EXAMPLE
        ),
        dial=_dial(server),
        name=server.text("name", Config.name),
        password=server.optional_text("password"),
        database=_database(server),
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
        cluster=cluster_from_table(root.table("cluster")),
        discovery=discovery.flag("enabled", True),
        discovery_interfaces=discovery.texts("interfaces", (), '["eth0"]'),
        desktops=desktops,
        local_desktops=local,
        setup=setup,
        state_dir=state,
        runtime_dir=runtime,
        source=root.source,
    )
    server.done()
    discovery.done()
    return config


def _check_desktops(config: Config) -> None:
    """At least one desktop (but on a node of a site: its desktops may all run on
    other nodes), each name once, and pools made of known desktops."""
    names = [d.name for d in config.desktops] + [d.name for d in config.local_desktops]
    from .store.location import is_postgres

    names += config.setup.names
    shared = config.database is not None and is_postgres(config.database)
    if not names and not config.setup.libvirt and not shared:
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


def _directories(server: Table, given: Path | None) -> tuple[Path, Path]:
    """The state and runtime directories: ``given`` (the command line) first, then the file."""
    state = _directory(server, "state_dir", "/var/lib/thinserve")
    runtime = _directory(server, "runtime_dir", "/run/thinserve")
    if given is not None:
        return given, runtime or runtime_dir_in(given)
    return state or default_state_dir(), runtime or default_runtime_dir()


def _directory(server: Table, key: str, example: str) -> Path | None:
    path = server.optional_text(key)
    if path is None:
        return None
    if not os.path.isabs(path):
        raise server.error(key, f'give an absolute path, e.g. "{example}"', path)
    return Path(path)


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


def _database(server: Table) -> str | None:
    """A path, sqlite:///path, or postgresql://... (thinserve.store.location);
    the password in a URL is never quoted back."""
    from .store.location import describe_location, is_postgres, sqlite_path

    location = server.optional_text("database")
    if not location or is_postgres(location):
        return location
    try:
        sqlite_path(location)
    except ValueError as exc:
        raise server.error("database", str(exc), describe_location(location)) from None
    return location


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
    if local.user is not None and not USER_PATTERN.fullmatch(local.user):
        raise table.error("user", 'give a Unix user name, e.g. "thinserve-desktop"', local.user)
    if local.user == "root":
        raise table.error(
            "user",
            'a desktop never runs as root: give an unprivileged account, e.g. "thinserve-desktop"',
        )
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
