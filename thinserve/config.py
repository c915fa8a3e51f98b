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

from .broker import BrokerConfig, BrokerConfigError
from .broker.config import from_mapping as broker_from_mapping
from .desktop_config import TABLES, DesktopConfigError, DesktopSetup
from .desktop_config import parse as parse_desktops
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


class ConfigError(Exception):
    """A configuration problem, with what to change in the message."""


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
    _only(data, {"server", "broker", "discovery", "desktop", "local_desktop", *TABLES}, source)
    try:
        setup = parse_desktops(data, source)
    except DesktopConfigError as exc:
        raise ConfigError(str(exc)) from None
    server = _table(data, "server", source)
    _only(
        server,
        {
            "listen",
            "name",
            "password",
            "web_listen",
            "web_allowed_origins",
            "dial",
            "database",
            "admin_socket",
            "tls_cert",
            "tls_key",
            "allow_none",
            "address_pairing",
            *LIMIT_KEYS,
        },
        f"{source} [server]",
    )
    discovery = _table(data, "discovery", source)
    _only(discovery, {"enabled", "interfaces"}, f"{source} [discovery]")
    enabled = discovery.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{source} [discovery] enabled: true or false")
    desktops = tuple(
        _desktop(d, f"{source} [[desktop]] #{i + 1}")
        for i, d in enumerate(_list(data, "desktop", source))
    )
    local = tuple(
        _local(d, f"{source} [[local_desktop]] #{i + 1}")
        for i, d in enumerate(_list(data, "local_desktop", source))
    )
    if not desktops and not local and not setup.names and not setup.libvirt:
        raise ConfigError(
            f"{source}: no desktops; add [[desktop]], [[local_desktop]], [[xvnc_desktop]], "
            "[[qemu_desktop]] or [[libvirt]]"
        )
    names = [d.name for d in desktops] + [d.name for d in local] + setup.names
    _unique_names(names, source)
    broker = _broker(data, source)
    for pool, members in broker.pools.items():
        unknown = [m for m in members if m not in names]
        if unknown and not any(not lc.domains for lc in setup.libvirt):
            raise ConfigError(
                f"{source} [broker] pool {pool!r} names unknown desktops {unknown}; "
                f"configured: {', '.join(names)}"
            )
    where = f"{source} [server]"
    return Config(
        listen=_endpoints(server, "listen", Config.listen, where, allow_empty=False),
        web_listen=_endpoints(server, "web_listen", Config.web_listen, where, allow_empty=True),
        web_allowed_origins=_endpoints(server, "web_allowed_origins", (), where, allow_empty=True),
        dial=_dial(server, where),
        name=_str(server, "name", "thinserve", f"{source} [server]"),
        password=_opt_str(server, "password", f"{source} [server]"),
        database=_opt_str(server, "database", f"{source} [server]"),
        admin_socket=_admin_socket(server, f"{source} [server]"),
        **_link_security(server, where),
        **_limits(server, where),
        broker=broker,
        discovery=enabled,
        discovery_interfaces=_endpoints(
            discovery, "interfaces", (), f"{source} [discovery]", allow_empty=True
        ),
        desktops=desktops,
        local_desktops=local,
        setup=setup,
        source=source,
    )


def _link_security(server: dict[str, Any], where: str) -> dict[str, Any]:
    cert, key = _opt_str(server, "tls_cert", where), _opt_str(server, "tls_key", where)
    if (cert is None) != (key is None):
        raise ConfigError(f"{where}: give both tls_cert and tls_key (PEM files), or neither")
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.path.isabs(path):
            raise ConfigError(f"{where} {name} = {path!r}: give an absolute path")
    allow_none = _str(server, "allow_none", "loopback", where)
    if allow_none not in ALLOW_NONE_CHOICES:
        raise ConfigError(
            f"{where} allow_none = {allow_none!r}: one of {', '.join(ALLOW_NONE_CHOICES)}"
        )
    subnets = _endpoints(server, "address_pairing", (), where, allow_empty=True)
    for subnet in subnets:
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise ConfigError(
                f'{where} address_pairing: {subnet!r} is not a subnet such as "10.1.2.0/24"'
            ) from None
    return {"tls_cert": cert, "tls_key": key, "allow_none": allow_none, "address_pairing": subnets}


LIMIT_KEYS = {
    "blacklist_threshold": (1, 1000),
    "blacklist_timeout": (1, 86400),
    "max_connections": (1, 100_000),
    "max_per_address": (1, 100_000),
    "max_unpaired": (1, 100_000),
}


def _limits(server: dict[str, Any], where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, (low, high) in LIMIT_KEYS.items():
        value = server.get(key, getattr(Config, key))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ConfigError(f"{where} {key} = {value!r}: a number from {low} to {high}")
        values[key] = value if key == "blacklist_timeout" else int(value)
    return values


def _dial(server: dict[str, Any], where: str) -> tuple[str, ...]:
    from .viewers import ViewerAddressError, listening_viewer

    addresses = _endpoints(server, "dial", (), where, allow_empty=True)
    for address in addresses:
        try:
            listening_viewer(address)
        except ViewerAddressError as exc:
            raise ConfigError(f"{where} dial: {exc}") from None
    return addresses


def _broker(data: dict[str, Any], source: str) -> BrokerConfig:
    where = f"{source} [broker]"
    try:
        return broker_from_mapping(_table(data, "broker", source), where)
    except BrokerConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


MAX_SOCKET_PATH = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def _admin_socket(server: dict[str, Any], where: str) -> str | None:
    path = _opt_str(server, "admin_socket", where)
    if not path:
        return path
    if not path.startswith("/"):
        raise ConfigError(
            f'{where} admin_socket = {path!r}: give an absolute path, e.g. "/run/thinserve/'
            'admin.sock", or "" to turn the admin API off'
        )
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"{where} admin_socket: at most {MAX_SOCKET_PATH} bytes (a Unix socket limit)"
        )
    return path


def _desktop(d: dict[str, Any], where: str) -> DesktopConfig:
    _only(d, {"name", "address", "password", "username", "ca_file", "encodings"}, where)
    names = d.get("encodings")
    encodings = None
    if names is not None:
        if not isinstance(names, list) or not names:
            raise ConfigError(f'{where} encodings: a list such as ["tight", "zrle"]')
        unknown = [n for n in names if n not in ENCODING_NAMES]
        if unknown:
            raise ConfigError(
                f"{where} encodings: unknown {unknown}; known: {', '.join(ENCODING_NAMES)}"
            )
        encodings = tuple(ENCODING_NAMES[n] for n in names)
    address = _str(d, "address", None, where)
    address_to_endpoint(address, where)
    return DesktopConfig(
        name=_str(d, "name", None, where),
        address=address,
        password=_opt_str(d, "password", where),
        username=_opt_str(d, "username", where),
        ca_file=_opt_str(d, "ca_file", where),
        encodings=encodings,
    )


def _local(d: dict[str, Any], where: str) -> LocalDesktopConfig:
    _only(d, {"name", "geometry", "command"}, where)
    geometry = _str(d, "geometry", "1280x800", where)
    if not re.fullmatch(r"\d{2,5}x\d{2,5}", geometry):
        raise ConfigError(f"{where} geometry = {geometry!r}: write WIDTHxHEIGHT, e.g. 1280x800")
    return LocalDesktopConfig(
        name=_str(d, "name", None, where),
        geometry=geometry,
        command=_opt_str(d, "command", where),
    )


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


def _endpoints(
    d: dict[str, Any], key: str, default: tuple[str, ...], where: str, allow_empty: bool
) -> tuple[str, ...]:
    value = d.get(key, list(default))
    if isinstance(value, str):
        value = [value]
    ok = isinstance(value, list) and all(isinstance(x, str) and x for x in value)
    if not ok or (not value and not allow_empty):
        raise ConfigError(f'{where} {key}: give a list of strings, e.g. ["tcp:5900"]')
    return tuple(value)


def _only(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _table(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return value


def _list(d: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise ConfigError(f"{where}: write desktops as [[{key}]] tables")
    return value


def _str(d: dict[str, Any], key: str, default: str | None, where: str) -> str:
    value = d.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _opt_str(d: dict[str, Any], key: str, where: str) -> str | None:
    value = d.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value


def _unique_names(names: list[str], where: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{where}: two desktops are named {name!r}; names must differ")
        seen.add(name)
