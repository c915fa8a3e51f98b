"""Placing a libvirt desktop on a host, and the domain XML made from a template:
plain data in, plain data out (no libvirt needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from thinserve.backends.base import BackendError
from thinserve.backends.libvirt_placement import (
    HostConfig,
    HostLoad,
    choose_host,
    describe,
    why_full,
)
from thinserve.backends.libvirt_xml import domain_from_template

GIB = 1024**3


def loads(*hosts: tuple[str, int, int] | tuple[str, int, int, int]) -> list[HostLoad]:
    """(name, running, free GiB[, max_domains]) in config order."""
    return [HostLoad(h[0], h[1], h[2] * GIB, h[3] if len(h) > 3 else None) for h in hosts]


@pytest.mark.parametrize(
    ("hosts", "placement", "chosen"),
    [
        (loads(("a", 3, 64), ("b", 1, 2)), "least-loaded", "b"),  # fewer running wins
        (loads(("a", 2, 4), ("b", 2, 16)), "least-loaded", "b"),  # then more free memory
        (loads(("a", 2, 8), ("b", 2, 8), ("c", 2, 8)), "least-loaded", "a"),  # then config order
        (loads(("a", 0, 1, 1), ("b", 5, 1)), "least-loaded", "a"),  # room left: 0 of 1
        (loads(("a", 1, 64, 1), ("b", 5, 1)), "least-loaded", "b"),  # a is full
        (loads(("a", 3, 1), ("b", 0, 64)), "first", "a"),  # config order, load aside
        (loads(("a", 2, 64, 2), ("b", 9, 1)), "first", "b"),  # the first with room
    ],
)
def test_choose_host(hosts: list[HostLoad], placement: str, chosen: str) -> None:
    found = choose_host(hosts, placement)
    assert found is not None and found.name == chosen


def test_no_room_and_no_host() -> None:
    full = loads(("a", 2, 8, 2), ("b", 1, 8, 1))
    assert choose_host(full) is None
    assert choose_host(full, "first") is None
    assert choose_host([]) is None
    assert why_full(full) == (
        "every host is at its max_domains (a runs 2 of 2, b runs 1 of 1); "
        "stop a desktop or raise max_domains"
    )
    assert why_full([]) == "no host can be reached"
    assert describe(HostLoad("a", 3, 5 * GIB)) == "3 running, 5120 MiB free"
    with pytest.raises(ValueError, match="placement must be one of least-loaded, first"):
        choose_host(full, "random")


def test_host_config() -> None:
    host = HostConfig("qemu+ssh://admin@kvm1.example/system", max_domains=4)
    assert (host.name, host.remote_host, host.console_host) == (
        "qemu+ssh://admin@kvm1.example/system",
        "kvm1.example",
        None,
    )
    assert HostConfig("xen:///system").remote_host is None
    with pytest.raises(ValueError, match="max_domains must be at least 1"):
        HostConfig("xen:///system", max_domains=0)
    with pytest.raises(ValueError, match="uri must not be empty"):
        HostConfig("")


TEMPLATE = """<domain type='kvm'>
  <name>template</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='MiB'>1024</memory>
  <devices>
    <interface type='network'><mac address='52:54:00:12:34:56'/><source network='desk'/></interface>
    <graphics type='vnc' autoport='yes' listen='0.0.0.0'/>
  </devices>
</domain>"""


def test_domain_from_template_renames_and_drops_identities() -> None:
    root = ET.fromstring(domain_from_template(TEMPLATE, "desk-7"))
    assert root.findtext("name") == "desk-7"
    assert root.find("uuid") is None
    assert root.find("./devices/interface/mac") is None
    kept = [(e.tag, dict(e.attrib)) for e in root.iter() if e.tag in ("source", "graphics")]
    assert kept == [
        ("source", {"network": "desk"}),
        ("graphics", {"type": "vnc", "autoport": "yes", "listen": "0.0.0.0"}),
    ]
    nameless = ET.fromstring(domain_from_template("<domain type='test'/>", "d"))
    assert nameless.findtext("name") == "d"


@pytest.mark.parametrize(
    ("template", "message"),
    [("<domain", "not XML"), ("<network><name>n</name></network>", "root is <network>")],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        domain_from_template(template, "d")
