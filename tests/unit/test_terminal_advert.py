"""The terminal advert contract: parsing, building, limits, versioning, keys."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import string
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo, service_type_name

from protocols.rfb.errors import ProtocolError
from protocols.terminal import (
    CONTRACT_VERSION,
    KEYLESS_VERSION,
    MAX_ADDRESSES,
    MAX_INSTANCE_BYTES,
    MAX_SCREEN_SIDE,
    MAX_TXT_KEYS,
    SERVICE_NAME,
    SERVICE_TYPE,
    AdvertError,
    TerminalAdvert,
    UnsupportedVersion,
)


@dataclass
class Record:
    """A resolved service as parse sees it, with every field open to tampering."""

    name: object = f"Lab 3.{SERVICE_TYPE}"
    port: object = 5500
    properties: object = field(
        default_factory=lambda: {
            b"id": b"00-11-22-aa-bb-cc",
            b"model": b"Pi Zero 2 W",
            b"screen": b"1920x1080",
            b"proto": b"1",
        }
    )
    addresses: object = field(default_factory=lambda: ["127.0.0.1"])

    def parsed_scoped_addresses(self) -> object:
        return self.addresses


def with_props(**changes: bytes | None) -> Record:
    record = Record()
    assert isinstance(record.properties, dict)
    for key, value in changes.items():
        record.properties[key.encode()] = value
    return record


def without(key: str) -> Record:
    record = Record()
    assert isinstance(record.properties, dict)
    del record.properties[key.encode()]
    return record


def fingerprint_of(seed: bytes) -> str:
    """A fingerprint as protocols/identity.py makes them, computed here independently."""
    return base64.b32encode(hashlib.sha256(seed).digest()).decode().rstrip("=").lower()


KEY = fingerprint_of(b"a terminal's public key")
KEY_ID = "key-" + KEY[:26]


def keyed(**changes: bytes | None) -> Record:
    """A version 2 advert: the key, and the id made from it."""
    record = with_props(id=KEY_ID.encode(), key=KEY.encode(), proto=b"2")
    assert isinstance(record.properties, dict)
    for key, value in changes.items():
        if value is None and key.startswith("no_"):
            del record.properties[key[3:].encode()]
        else:
            record.properties[key.encode()] = value
    return record


# -- the service type ---------------------------------------------------------------------
def test_service_name_follows_rfc_6335() -> None:
    assert 1 <= len(SERVICE_NAME) <= 15
    assert re.fullmatch(r"[A-Za-z0-9-]+", SERVICE_NAME)
    assert re.search(r"[A-Za-z]", SERVICE_NAME)
    assert not SERVICE_NAME.startswith("-") and not SERVICE_NAME.endswith("-")
    assert "--" not in SERVICE_NAME
    assert f"_{SERVICE_NAME}._tcp.local." == SERVICE_TYPE
    assert service_type_name(SERVICE_TYPE, strict=True) == SERVICE_TYPE


# -- valid adverts ----------------------------------------------------------------------------
def test_parse_reads_every_field() -> None:
    advert = TerminalAdvert.parse(Record())
    assert advert.instance == "Lab 3"
    assert advert.terminal_id == "00-11-22-aa-bb-cc"
    assert advert.model == "Pi Zero 2 W"
    assert (advert.width, advert.height) == (1920, 1080)
    assert advert.screen == "1920x1080"
    assert advert.port == 5500
    assert advert.addresses == ("127.0.0.1",)
    assert advert.proto == KEYLESS_VERSION == 1  # a keyless terminal
    assert advert.key is None
    assert advert.service_name == f"Lab 3.{SERVICE_TYPE}"


def test_version_2_carries_the_key_and_the_id_made_from_it() -> None:
    assert CONTRACT_VERSION == 2
    advert = TerminalAdvert.parse(keyed())
    assert (advert.proto, advert.key, advert.terminal_id) == (2, KEY, KEY_ID)
    assert len(KEY) == 52 and f"key-{KEY[:26]}" == KEY_ID
    # Written in capitals, the key and the id still match (both compare without case).
    shouting = TerminalAdvert.parse(keyed(key=KEY.upper().encode(), id=KEY_ID.upper().encode()))
    assert shouting == advert


def test_a_version_1_advert_stays_keyless_even_with_a_key() -> None:
    record = with_props(key=KEY.encode())  # proto 1 has no key: ignored like any unknown key
    advert = TerminalAdvert.parse(record)
    assert advert.key is None and advert.proto == 1
    assert advert == TerminalAdvert.parse(Record())


def test_keyed_builds_the_id_from_the_key() -> None:
    advert = TerminalAdvert.keyed("Lab 3", KEY.upper(), "Pi", 800, 600, 5500, ("127.0.0.1",))
    assert (advert.terminal_id, advert.key, advert.proto) == (KEY_ID, KEY, CONTRACT_VERSION)
    assert advert.build() == {
        "id": KEY_ID,
        "model": "Pi",
        "screen": "800x600",
        "proto": "2",
        "key": KEY,
    }


def test_keys_are_case_insensitive_and_the_first_of_equal_keys_wins() -> None:
    record = Record(
        properties={
            b"ID": b"First",
            b"id": b"second",
            b"Model": b"M",
            b"SCREEN": b"640x480",
            b"proto": b"1",
        }
    )
    advert = TerminalAdvert.parse(record)
    assert advert.terminal_id == "first"  # ids compare without case
    assert (advert.model, advert.width, advert.height) == ("M", 640, 480)


def test_unknown_and_unusable_keys_are_ignored() -> None:
    record = with_props(colour=b"blue", flag=None)
    assert isinstance(record.properties, dict)
    record.properties[b"\xff\xfe"] = b"x"
    record.properties[b""] = b"x"
    assert TerminalAdvert.parse(record) == TerminalAdvert.parse(Record())


def test_addresses_keep_their_order_without_duplicates() -> None:
    record = Record(addresses=["127.0.0.2", "::1", "127.0.0.2", "127.0.0.1"])
    assert TerminalAdvert.parse(record).addresses == ("127.0.0.2", "::1", "127.0.0.1")


def test_ipv4_only_drops_ipv6_addresses() -> None:
    record = Record(addresses=["fe80::1%2", "127.0.0.1"])
    assert TerminalAdvert.parse(record, ipv6=False).addresses == ("127.0.0.1",)
    assert TerminalAdvert.parse(record).addresses == ("fe80::1%2", "127.0.0.1")


def test_limits_are_inclusive() -> None:
    longest_id = "a" * 64
    longest_model = "m" * 64
    side = str(MAX_SCREEN_SIDE).encode()
    record = with_props(id=longest_id.encode(), model=longest_model.encode(), screen=side + b"x1")
    record.name = "i" * MAX_INSTANCE_BYTES + "." + SERVICE_TYPE
    record.port = 65535
    record.addresses = [f"127.0.0.{n}" for n in range(1, MAX_ADDRESSES + 1)]
    advert = TerminalAdvert.parse(record)
    assert (advert.terminal_id, advert.model, advert.width) == (
        longest_id,
        longest_model,
        MAX_SCREEN_SIDE,
    )
    assert len(advert.addresses) == MAX_ADDRESSES


def test_a_newer_major_version_is_unsupported_even_when_its_fields_differ() -> None:
    newer = CONTRACT_VERSION + 1
    record = with_props(proto=str(newer).encode(), screen=b"something new", id=b"no key here")
    with pytest.raises(UnsupportedVersion) as caught:
        TerminalAdvert.parse(record)
    assert caught.value.version == newer
    assert isinstance(caught.value, AdvertError)


# -- malformed adverts ---------------------------------------------------------------------------
MALFORMED: dict[str, tuple[Record, str]] = {
    "no id": (without("id"), "'id' is missing"),
    "no model": (without("model"), "'model' is missing"),
    "no screen": (without("screen"), "'screen' is missing"),
    "no proto": (without("proto"), "'proto' is missing"),
    "boolean id": (with_props(id=None), "no value"),
    "empty id": (with_props(id=b""), "id is not"),
    "id with space": (with_props(id=b"a b"), "id is not"),
    "id with slash": (with_props(id=b"a/b"), "id is not"),
    "id starting with hyphen": (with_props(id=b"-abc"), "id is not"),
    "id too long": (with_props(id=b"a" * 65), "more than"),
    "id not ascii": (with_props(id="tèrm".encode()), "not ASCII"),
    "empty model": (with_props(model=b""), "model is not"),
    "model with control": (with_props(model=b"a\x01b"), "model is not"),
    "model with leading space": (with_props(model=b" abc"), "model is not"),
    "model with trailing space": (with_props(model=b"abc "), "model is not"),
    "model with DEL": (with_props(model=b"ab\x7f"), "model is not"),
    "model too long": (with_props(model=b"m" * 65), "more than"),
    "screen upper X": (with_props(screen=b"800X600"), "screen is not"),
    "screen no height": (with_props(screen=b"800x"), "screen is not"),
    "screen no width": (with_props(screen=b"x600"), "screen is not"),
    "screen zero": (with_props(screen=b"0x600"), "screen is not"),
    "screen leading zero": (with_props(screen=b"0800x600"), "screen is not"),
    "screen sign": (with_props(screen=b"+800x600"), "screen is not"),
    "screen spaces": (with_props(screen=b"800 x 600"), "screen is not"),
    "screen three parts": (with_props(screen=b"8x6x3"), "screen is not"),
    "screen too wide": (with_props(screen=b"16385x100"), "larger than"),
    "screen too tall": (with_props(screen=b"100x99999"), "larger than"),
    "screen wide digits": (with_props(screen="\uff1800x600".encode()), "not ASCII"),
    "proto zero": (with_props(proto=b"0"), "proto is not"),
    "proto leading zero": (with_props(proto=b"01"), "proto is not"),
    "proto dotted": (with_props(proto=b"1.0"), "proto is not"),
    "proto negative": (with_props(proto=b"-1"), "proto is not"),
    "proto word": (with_props(proto=b"one"), "proto is not"),
    "proto five digits": (with_props(proto=b"10000"), "proto is not"),
    "proto space": (with_props(proto=b" 1"), "proto is not"),
    "port missing": (Record(port=None), "port is not"),
    "port zero": (Record(port=0), "port is not"),
    "port too big": (Record(port=65536), "port is not"),
    "port negative": (Record(port=-1), "port is not"),
    "port boolean": (Record(port=True), "port is not"),
    "port huge": (Record(port=10**5000), "a large integer"),
    "port text": (Record(port="5500"), "port is not"),
    "other service type": (Record(name="Lab 3._rfb._tcp.local."), "not an instance"),
    "no instance": (Record(name=SERVICE_TYPE), "not an instance"),
    "empty instance": (Record(name="." + SERVICE_TYPE), "not an instance"),
    "instance too long": (Record(name="i" * 64 + "." + SERVICE_TYPE), "instance name is 64"),
    "instance with control": (Record(name="a\x00b." + SERVICE_TYPE), "control characters"),
    "name not text": (Record(name=b"Lab 3." + SERVICE_TYPE.encode()), "not text"),
    "no addresses": (Record(addresses=[]), "no usable address"),
    "multicast address": (Record(addresses=["224.0.0.251"]), "not a unicast"),
    "ipv6 multicast": (Record(addresses=["ff02::fb"]), "not a unicast"),
    "unspecified address": (Record(addresses=["0.0.0.0"]), "not a unicast"),
    "ipv6 unspecified": (Record(addresses=["::"]), "not a unicast"),
    "broadcast address": (Record(addresses=["255.255.255.255"]), "not a unicast"),
    "bad address": (Record(addresses=["127.0.0.1", "not-an-ip"]), "not an IP address"),
    "address not text": (Record(addresses=[b"\x7f\x00\x00\x01"]), "not an IP address"),
    "addresses not a list": (Record(addresses="127.0.0.1"), "not a list"),
    "too many addresses": (Record(addresses=["127.0.0.1"] * 17), "more than"),
    "properties not a mapping": (Record(properties=[(b"id", b"x")]), "not a mapping"),
    "too many keys": (
        Record(properties={f"k{n}".encode(): b"v" for n in range(MAX_TXT_KEYS + 1)}),
        "more than",
    ),
    "value of another type": (with_props(id=7), "value of type int"),  # type: ignore[arg-type]
    "v2 without key": (keyed(no_key=None), "'key' is missing"),
    "v2 boolean key": (keyed(key=None), "no value"),
    "v2 key too short": (keyed(key=KEY[:-1].encode()), "key is not 52"),
    "v2 key too long": (keyed(key=KEY.encode() + b"a"), "key is not 52"),
    "v2 key not base32": (keyed(key=KEY[:-1].encode() + b"1"), "key is not 52"),
    "v2 key with padding": (keyed(key=KEY[:-1].encode() + b"="), "key is not 52"),
    "v2 key over 64 bytes": (keyed(key=KEY.encode() * 2), "more than"),
    "v2 key not ascii": (keyed(key=KEY[:-1].encode() + "é".encode()), "not ASCII"),
    "v2 id not from the key": (keyed(id=b"00-11-22-aa-bb-cc"), "is not the id of its key"),
    "v2 id of another key": (
        keyed(id=b"key-" + fingerprint_of(b"other").encode()[:26]),
        "is not the id of its key",
    ),
    "v2 id with the whole key": (keyed(id=b"key-" + KEY.encode()), "is not the id of its key"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_adverts_raise_advert_error_with_a_reason(case: str) -> None:
    record, reason = MALFORMED[case]
    with pytest.raises(AdvertError) as caught:
        TerminalAdvert.parse(record)
    assert type(caught.value) is AdvertError
    assert reason in caught.value.reason
    assert len(caught.value.reason) < 160  # fit for one log line


def test_ipv6_only_advert_is_unusable_when_ipv4_only() -> None:
    with pytest.raises(AdvertError, match="no usable IPv4 address"):
        TerminalAdvert.parse(Record(addresses=["::1"]), ipv6=False)


def test_advert_errors_are_protocol_errors() -> None:
    assert issubclass(AdvertError, ProtocolError)


# -- building ----------------------------------------------------------------------------
def advert(**changes: object) -> TerminalAdvert:
    base = TerminalAdvert("Lab 3", "00-11-22-aa-bb-cc", "Pi", 800, 600, 5500, ("127.0.0.1",))
    return replace(base, **changes)  # type: ignore[arg-type]


def keyed_advert(**changes: object) -> TerminalAdvert:
    base = TerminalAdvert.keyed("Lab 3", KEY, "Pi", 800, 600, 5500, ("127.0.0.1",))
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [
        {"terminal_id": "UPPER"},
        {"terminal_id": "a b"},
        {"model": ""},
        {"model": "café"},
        {"width": 0},
        {"height": MAX_SCREEN_SIDE + 1},
        {"port": 0},
        {"proto": CONTRACT_VERSION + 1},
        {"instance": ""},
        {"instance": "x" * (MAX_INSTANCE_BYTES + 1)},
        {"addresses": ("224.0.0.1",)},
    ],
)
def test_build_refuses_what_parse_would_reject(changes: dict[str, object]) -> None:
    with pytest.raises(AdvertError):
        advert(**changes).build()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: advert(proto=2), "needs a key"),
        (lambda: advert(key=KEY, proto=1), "a key needs proto 2"),
        (lambda: advert(key=KEY, proto=2), "is not the id of its key"),  # a v1 id
        (lambda: keyed_advert(key=KEY.upper()), "lower case"),
        (lambda: keyed_advert(key=KEY[:-1]), "key is not 52"),
        (lambda: keyed_advert(terminal_id=KEY_ID[:-1] + "a"), "is not the id of its key"),
        (lambda: keyed_advert(proto=CONTRACT_VERSION + 1), "newer than"),
    ],
)
def test_build_refuses_keys_that_parse_would_reject(make: object, reason: str) -> None:
    with pytest.raises(AdvertError, match=reason):
        make().build()  # type: ignore[operator]


def test_a_keyed_advert_round_trips_and_a_keyless_one_stays_version_1() -> None:
    for original in (keyed_advert(), advert()):
        info = ServiceInfo(
            SERVICE_TYPE,
            original.service_name,
            port=original.port,
            properties=original.build(),
            parsed_addresses=list(original.addresses),
        )
        assert TerminalAdvert.parse(info) == original
    assert advert().proto == 1 and "key" not in advert().build()


def test_build_round_trips_through_a_zeroconf_service_info() -> None:
    original = advert()
    info = ServiceInfo(
        SERVICE_TYPE,
        original.service_name,
        port=original.port,
        properties=original.build(),
        parsed_addresses=list(original.addresses),
    )
    assert TerminalAdvert.parse(info) == original


# -- hypothesis --------------------------------------------------------------------------
ID_CHARS = string.ascii_lowercase + string.digits + "._:-"
ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_lowercase + string.digits),
    st.text(ID_CHARS, max_size=63),
)
models = st.from_regex(r"[\x21-\x7e]([\x20-\x7e]{0,62}[\x21-\x7e])?", fullmatch=True)
instances = st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=20,
)
ipv4 = st.ip_addresses(v=4).filter(
    lambda a: not (a.is_multicast or a.is_unspecified or str(a) == "255.255.255.255")
)
valid_adverts = st.builds(
    TerminalAdvert,
    instance=instances,
    terminal_id=ids,
    model=models,
    width=st.integers(1, MAX_SCREEN_SIDE),
    height=st.integers(1, MAX_SCREEN_SIDE),
    port=st.integers(1, 65535),
    addresses=st.lists(ipv4.map(str), min_size=1, max_size=4, unique=True).map(tuple),
)
fingerprints = st.binary(min_size=1, max_size=32).map(fingerprint_of)
keyed_adverts = st.builds(
    TerminalAdvert.keyed,
    instance=instances,
    key=fingerprints,
    model=models,
    width=st.integers(1, MAX_SCREEN_SIDE),
    height=st.integers(1, MAX_SCREEN_SIDE),
    port=st.integers(1, 65535),
    addresses=st.lists(ipv4.map(str), min_size=1, max_size=4, unique=True).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(valid_adverts, keyed_adverts))
def test_every_valid_advert_round_trips(original: TerminalAdvert) -> None:
    info = ServiceInfo(
        SERVICE_TYPE,
        original.service_name,
        port=original.port,
        properties=original.build(),
        parsed_addresses=list(original.addresses),
    )
    assert TerminalAdvert.parse(info) == original


keys = st.one_of(
    st.sampled_from([b"id", b"ID", b"model", b"screen", b"proto", b"Proto", b"key", b"KEY"]),
    st.binary(max_size=12),
    st.text(max_size=8),
)
values = st.one_of(
    st.none(),
    st.binary(max_size=80),
    st.text(max_size=80),
    st.from_regex(r"[0-9]{1,6}x[0-9]{1,6}", fullmatch=True).map(str.encode),
    st.sampled_from([b"1", b"2", b"0", b"01", b"a", b"Pi", KEY.encode(), KEY_ID.encode()]),
    st.integers(),
)
addresses = st.one_of(
    st.lists(st.ip_addresses().map(str), max_size=20),
    st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=8)), max_size=3),
    st.text(max_size=10),
)
names = st.one_of(
    st.text(max_size=80).map(lambda s: s + "." + SERVICE_TYPE),
    st.text(max_size=80),
    st.binary(max_size=10),
)
ports = st.one_of(st.none(), st.integers(), st.booleans(), st.text(max_size=5))


def check_parsed(advert: TerminalAdvert) -> None:
    """What a successful parse promises, checked independently of the parser."""
    assert 1 <= len(advert.terminal_id) <= 64 and advert.terminal_id == advert.terminal_id.lower()
    assert set(advert.terminal_id) <= set(ID_CHARS)
    assert 1 <= len(advert.model) <= 64 and advert.model.isprintable() and advert.model.isascii()
    assert 1 <= advert.width <= MAX_SCREEN_SIDE and 1 <= advert.height <= MAX_SCREEN_SIDE
    assert 0 < advert.port < 65536
    assert 1 <= advert.proto <= CONTRACT_VERSION
    if advert.proto == 1:
        assert advert.key is None
    else:  # the key, and the id made from it
        assert advert.key is not None and len(advert.key) == 52
        assert set(advert.key) <= set(string.ascii_lowercase + "234567")
        assert advert.terminal_id == "key-" + advert.key[:26]
    assert 1 <= len(advert.addresses) <= MAX_ADDRESSES
    for address in advert.addresses:
        assert not ipaddress.ip_address(address).is_multicast
    published = advert.build()  # what parsed can be published again
    assert len(published) == (4 if advert.key is None else 5)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(keys, values, max_size=MAX_TXT_KEYS + 2),
    ports,
    names,
    addresses,
    st.booleans(),
)
def test_random_records_raise_only_advert_errors(
    properties: dict[object, object], port: object, name: object, addrs: object, ipv6: bool
) -> None:
    record = Record(name=name, port=port, properties=properties, addresses=addrs)
    try:
        advert = TerminalAdvert.parse(record, ipv6=ipv6)
    except AdvertError as exc:
        assert isinstance(exc.reason, str) and len(exc.reason) < 200
        return
    check_parsed(advert)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([b"id", b"model", b"screen", b"proto"]), values, st.booleans())
def test_one_mutated_field_raises_only_advert_errors(
    key: bytes, value: object, version_2: bool
) -> None:
    record = keyed() if version_2 else Record()
    assert isinstance(record.properties, dict)
    record.properties[key] = value
    try:
        advert = TerminalAdvert.parse(record)
    except AdvertError:
        return
    check_parsed(advert)
    assert isinstance(value, bytes | str)
    text = value.decode("ascii") if isinstance(value, bytes) else value
    parsed = {
        b"id": advert.terminal_id,
        b"model": advert.model,
        b"screen": advert.screen,
        b"proto": str(advert.proto),
    }[key]
    assert parsed == (text.lower() if key == b"id" else text)
