"""The terminal advert: how a network terminal announces itself with DNS-SD.

A terminal that waits for thinserve to connect to it (like a VNC "listening
viewer") publishes one DNS-SD service of type ``_thinserve-term._tcp`` on
the local link.  The SRV record carries the port it listens on, the A/AAAA
records its addresses, and the TXT record these keys (contract version 2):

``id``      stable terminal id: 1-64 of ``A-Z a-z 0-9 . _ : -``, starting
            with a letter or digit; compared without regard to case
``model``   1-64 printable ASCII characters, no space at either end
``screen``  ``WIDTHxHEIGHT`` in pixels, each 1-16384, no leading zeros
``proto``   the contract's major version, a decimal integer 1-9999
``key``     (proto 2 and later, required) the fingerprint of the key the
            terminal proves on every connection: 52 characters of
            lower-case base32 (protocols/identity.py); ``id`` must be the
            id made from it, ``key-`` and its first 26 characters

Version 1 adverts have no ``key``: they still parse, as keyless terminals
(``key`` is None, and a ``key`` they carry anyway is ignored).  The key in
an advert proves nothing by itself; it says which key the terminal's
connections will prove.

Everything here arrives from the network, so it is untrusted: every field
is bounded, and anything malformed raises AdvertError with a reason fit to
log.  An advert whose ``proto`` is newer than this module understands
raises UnsupportedVersion (a subclass), so callers can log it more calmly.
Unknown TXT keys are ignored: a terminal may add keys without a new major
version.  docs/terminal-advert.md describes the contract for terminal makers.

This module does no I/O: ``TerminalAdvert.parse`` reads any object shaped
like zeroconf's ServiceInfo (see ServiceRecord), ``build`` returns the TXT
properties to publish.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from protocols.identity import is_fingerprint
from protocols.identity import terminal_id as key_terminal_id
from protocols.rfb.errors import ProtocolError

SERVICE_NAME = "thinserve-term"  # RFC 6335: 1-15 characters
SERVICE_TYPE = f"_{SERVICE_NAME}._tcp.local."
CONTRACT_VERSION = 2  # the newest major version this module understands
KEYLESS_VERSION = 1  # the version of adverts without a key
DEFAULT_PORT = 5500  # where VNC listening viewers usually listen

MAX_TXT_KEYS = 64
MAX_VALUE_BYTES = 64
MAX_INSTANCE_BYTES = 63  # one DNS label
MAX_SCREEN_SIDE = 16384
MAX_ADDRESSES = 16

KEY_ID, KEY_MODEL, KEY_SCREEN, KEY_PROTO, KEY_KEY = "id", "model", "screen", "proto", "key"

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MODEL = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,62}[\x21-\x7e])?")
_SCREEN = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})")
_PROTO = re.compile(r"[1-9][0-9]{0,3}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AdvertError(ProtocolError):
    """A terminal advert is malformed or cannot be used."""


class UnsupportedVersion(AdvertError):
    """A terminal advert speaks a newer major version of the contract."""

    def __init__(self, version: int) -> None:
        super().__init__(f"contract version {version} is newer than {CONTRACT_VERSION}")
        self.version = version


class ServiceRecord(Protocol):
    """What parse needs from a resolved service (zeroconf's ServiceInfo fits)."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def properties(self) -> Mapping[bytes, bytes | None]: ...
    def parsed_scoped_addresses(self) -> list[str]: ...


@dataclass(frozen=True)
class TerminalAdvert:
    instance: str  # the DNS-SD instance name, e.g. "Lab terminal 3"
    terminal_id: str  # lower case
    model: str
    width: int
    height: int
    port: int
    addresses: tuple[str, ...] = ()
    key: str | None = None  # the key's fingerprint (proto 2 and later)
    proto: int = 0  # 0: the version the fields need (2 with a key, 1 without)

    def __post_init__(self) -> None:
        if self.proto == 0:
            version = KEYLESS_VERSION if self.key is None else CONTRACT_VERSION
            object.__setattr__(self, "proto", version)

    @classmethod
    def keyed(
        cls,
        instance: str,
        key: str,
        model: str,
        width: int,
        height: int,
        port: int,
        addresses: tuple[str, ...] = (),
    ) -> TerminalAdvert:
        """The advert of a terminal with a key: its id is the one made from the key."""
        fingerprint = parse_key(key)
        terminal_id = key_terminal_id(fingerprint)
        return cls(instance, terminal_id, model, width, height, port, addresses, key=fingerprint)

    @property
    def service_name(self) -> str:
        return f"{self.instance}.{SERVICE_TYPE}"

    @property
    def screen(self) -> str:
        return f"{self.width}x{self.height}"

    @classmethod
    def parse(cls, info: ServiceRecord, *, ipv6: bool = True) -> TerminalAdvert:
        """Check a resolved service against the contract; raise AdvertError if it fails.

        With ``ipv6=False`` IPv6 addresses are dropped before the checks.
        """
        props = text_properties(info.properties)
        proto = parse_proto(_value(props, KEY_PROTO))
        terminal_id = parse_id(_value(props, KEY_ID))
        key = None
        if proto > KEYLESS_VERSION:
            key = parse_key(_value(props, KEY_KEY))
            check_key_id(terminal_id, key)
        width, height = parse_screen(_value(props, KEY_SCREEN))
        return cls(
            instance=instance_of(info.name),
            terminal_id=terminal_id,
            model=parse_model(_value(props, KEY_MODEL)),
            width=width,
            height=height,
            port=parse_port(info.port),
            addresses=parse_addresses(info.parsed_scoped_addresses(), ipv6=ipv6),
            key=key,
            proto=proto,
        )

    def build(self) -> dict[str, str]:
        """The TXT properties to publish; raises AdvertError if a field breaks the contract."""
        properties = {
            KEY_ID: self.terminal_id,
            KEY_MODEL: self.model,
            KEY_SCREEN: self.screen,
            KEY_PROTO: str(self.proto),
        }
        if self.key is not None:
            properties[KEY_KEY] = self.key
        check_instance(self.instance)
        parse_port(self.port)
        if self.addresses:
            parse_addresses(list(self.addresses))
        checked = text_properties({k.encode(): v.encode() for k, v in properties.items()})
        if parse_id(_value(checked, KEY_ID)) != self.terminal_id:
            raise AdvertError("terminal id must be lower case")
        parse_model(_value(checked, KEY_MODEL))
        parse_screen(_value(checked, KEY_SCREEN))
        proto = parse_proto(_value(checked, KEY_PROTO))
        if proto == KEYLESS_VERSION and self.key is not None:
            raise AdvertError(f"a key needs proto {CONTRACT_VERSION} or later")
        if proto > KEYLESS_VERSION:
            if self.key is None:
                raise AdvertError(f"proto {proto} needs a key")
            if parse_key(_value(checked, KEY_KEY)) != self.key:
                raise AdvertError("the key must be written in lower case")
            check_key_id(self.terminal_id, self.key)
        return properties


# -- TXT record -----------------------------------------------------------------------
def text_properties(raw: object) -> dict[str, bytes | None]:
    """Bounded TXT properties with lower-case keys; the first of equal keys wins."""
    if not isinstance(raw, Mapping):
        raise AdvertError("TXT properties are not a mapping")
    if len(raw) > MAX_TXT_KEYS:
        raise AdvertError(f"TXT record has {len(raw)} keys, more than {MAX_TXT_KEYS}")
    props: dict[str, bytes | None] = {}
    for key, value in raw.items():
        name = _key_name(key)
        if name is None or name in props:
            continue
        props[name] = _raw_value(name, value)
    return props


def _key_name(key: object) -> str | None:
    """A TXT key as lower-case text, or None for keys this contract cannot use."""
    if isinstance(key, str):
        key = key.encode("utf-8", "replace")
    if not isinstance(key, bytes) or not key or len(key) > MAX_VALUE_BYTES:
        return None
    try:
        return key.decode("ascii").lower()
    except UnicodeDecodeError:
        return None


def _raw_value(name: str, value: object) -> bytes | None:
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    if value is not None and not isinstance(value, bytes):
        raise AdvertError(f"TXT key {name!r} has a value of type {type(value).__name__}")
    return value


def _value(props: Mapping[str, bytes | None], key: str) -> str:
    if key not in props:
        raise AdvertError(f"TXT key {key!r} is missing")
    value = props[key]
    if value is None:
        raise AdvertError(f"TXT key {key!r} has no value")
    if len(value) > MAX_VALUE_BYTES:
        raise AdvertError(f"TXT key {key!r} is {len(value)} bytes, more than {MAX_VALUE_BYTES}")
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise AdvertError(f"TXT key {key!r} is not ASCII: {_show(value)}") from None


# -- fields ------------------------------------------------------------------------------
def parse_proto(text: str) -> int:
    if not _PROTO.fullmatch(text):
        raise AdvertError(f"proto is not a version number: {_show(text)}")
    version = int(text)
    if version > CONTRACT_VERSION:
        raise UnsupportedVersion(version)
    return version


def parse_id(text: str) -> str:
    if not _ID.fullmatch(text):
        raise AdvertError(f"id is not 1-64 of A-Z a-z 0-9 . _ : - : {_show(text)}")
    return text.lower()


def parse_key(text: str) -> str:
    """A key's fingerprint: 52 characters of base32 (lower case once parsed)."""
    key = text.lower()
    if not is_fingerprint(key):
        raise AdvertError(f"key is not 52 characters of base32 (a-z, 2-7): {_show(text)}")
    return key


def check_key_id(terminal_id: str, key: str) -> None:
    """With a key, the id is the one made from it."""
    expected = key_terminal_id(key)
    if terminal_id != expected:
        raise AdvertError(f"id {_show(terminal_id)} is not the id of its key, {expected}")


def parse_model(text: str) -> str:
    if not _MODEL.fullmatch(text):
        raise AdvertError(f"model is not 1-64 printable ASCII characters: {_show(text)}")
    return text


def parse_screen(text: str) -> tuple[int, int]:
    match = _SCREEN.fullmatch(text)
    if match is None:
        raise AdvertError(f"screen is not WIDTHxHEIGHT: {_show(text)}")
    width, height = int(match.group(1)), int(match.group(2))
    if width > MAX_SCREEN_SIDE or height > MAX_SCREEN_SIDE:
        raise AdvertError(f"screen {width}x{height} is larger than {MAX_SCREEN_SIDE} a side")
    return width, height


def parse_port(port: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise AdvertError(f"port is not 1-65535: {_show(port)}")
    return port


def instance_of(name: object) -> str:
    """The instance part of a full service name ``<instance>._thinserve-term._tcp.local.``."""
    if not isinstance(name, str):
        raise AdvertError("service name is not text")
    suffix = "." + SERVICE_TYPE
    if len(name) <= len(suffix) or not name.lower().endswith(suffix):
        raise AdvertError(f"service name is not an instance of {SERVICE_TYPE}: {_show(name)}")
    instance = name[: -len(suffix)]
    check_instance(instance)
    return instance


def check_instance(instance: str) -> None:
    size = len(instance.encode("utf-8", "replace"))
    if not 0 < size <= MAX_INSTANCE_BYTES:
        raise AdvertError(f"instance name is {size} bytes, not 1-{MAX_INSTANCE_BYTES}")
    if _CONTROL.search(instance):
        raise AdvertError(f"instance name holds control characters: {_show(instance)}")


def parse_addresses(addresses: object, *, ipv6: bool = True) -> tuple[str, ...]:
    """Unicast addresses in the order given, without duplicates; at least one."""
    if not isinstance(addresses, list | tuple):
        raise AdvertError("addresses are not a list")
    if len(addresses) > MAX_ADDRESSES:
        raise AdvertError(f"{len(addresses)} addresses, more than {MAX_ADDRESSES}")
    found: list[str] = []
    for text in addresses:
        address = _unicast(text)
        if (ipv6 or address.version == 4) and str(address) not in found:
            found.append(str(address))
    if not found:
        raise AdvertError("no usable address" if ipv6 else "no usable IPv4 address")
    return tuple(found)


def _unicast(text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if not isinstance(text, str) or len(text) > 64:
        raise AdvertError(f"address is not an IP address: {_show(text)}")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise AdvertError(f"address is not an IP address: {_show(text)}") from None
    if address.is_multicast or address.is_unspecified or str(address) == "255.255.255.255":
        raise AdvertError(f"address {address} is not a unicast address")
    return address


def _show(value: object) -> str:
    """A short, log-safe rendering of an untrusted value."""
    if isinstance(value, str | bytes):
        text = repr(value[:40])
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value) if abs(value) < 10**12 else "a large integer"
    else:
        text = f"a {type(value).__name__}"
    return text if len(text) <= 48 else text[:45] + "..."
