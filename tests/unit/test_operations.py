"""The doctor's pure parts: which endpoints are TCP ports, the KVM test guest's
boot sector, and how a check reads."""

from __future__ import annotations

from thinserve.operations.kvmprobe import EXIT_PORT, EXIT_VALUE, MARKER, boot_sector
from thinserve.operations.ports import Port, tcp_ports
from thinserve.operations.report import Check


def test_tcp_ports_are_read_from_twisted_endpoints() -> None:
    endpoints = (
        "tcp:5900",
        "tcp:port=5800:interface=127.0.0.1",
        "tcp6:port=5901:interface=\\:\\:1",
        "unix:/run/thinserve/x.sock",
        "tcp:port=0:interface=127.0.0.1",
    )
    assert tcp_ports(endpoints) == [
        Port(5900, "", "tcp:5900"),
        Port(5800, "127.0.0.1", "tcp:port=5800:interface=127.0.0.1"),
        Port(5901, "::1", "tcp6:port=5901:interface=\\:\\:1"),
    ]


def test_the_boot_sector_is_one_bootable_sector_that_prints_and_exits() -> None:
    sector = boot_sector()
    assert len(sector) == 512
    assert sector[-2:] == b"\x55\xaa"
    assert sector[:3] == b"\xba\xf8\x03"  # mov dx, COM1
    for byte in MARKER:
        assert bytes((0xB0, byte, 0xEE)) in sector
    assert bytes((0xBA, EXIT_PORT, 0x00, 0xB0, EXIT_VALUE, 0xEE)) in sector


def test_a_problem_prints_its_fix_below_it() -> None:
    check = Check("port 5900", "FAIL", "in use", "ss -ltnp 'sport = :5900'")
    assert check.lines() == [
        "FAIL port 5900: in use",
        "     fix: ss -ltnp 'sport = :5900'",
    ]
    assert Check("disk", "OK", "plenty", "").lines() == ["OK   disk: plenty"]
