"""Guessing and floods, without sockets: the blacklist, credential checks,
connection caps and their RFB refusal, and forgetting terminals never paired."""

from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from protocols.rfb.constants import Version
from protocols.rfb.handshake import ClientHandshake, ConnectionFailed, VncAuthResponse
from protocols.rfb.security.vncauth import encrypt_challenge, make_challenge
from thinserve.admission import Admission, Refusal
from thinserve.blacklist import Blacklist
from thinserve.broker import Broker, BrokerConfig, TerminalInfo
from thinserve.config import ConfigError, from_dict
from thinserve.credentials import Credentials
from thinserve.relay import drawn, screens
from thinserve.store import Pairing, SqliteStore
from thinserve.store.base import Terminal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_source_that_keeps_failing_waits_longer_each_time() -> None:
    clock = Clock()
    blacklist = Blacklist(threshold=3, timeout=10.0, longest=40.0, clock=clock)
    assert [blacklist.failed("10.0.0.9") for _ in range(2)] == [0, 0]
    assert blacklist.failed("10.0.0.9") == 10  # the third failure blocks
    assert blacklist.wait("10.0.0.9") == 10 and blacklist.wait("10.0.0.10") == 0
    clock.now += 10
    assert blacklist.wait("10.0.0.9") == 0  # one more try after the block
    assert blacklist.failed("10.0.0.9") == 20  # which fails: twice as long
    clock.now += 20
    assert blacklist.failed("10.0.0.9") == 40
    clock.now += 40
    assert blacklist.failed("10.0.0.9") == 40  # never longer than longest
    blacklist.succeeded("10.0.0.9")
    assert blacklist.wait("10.0.0.9") == 0 and blacklist.failed("10.0.0.9") == 0


def test_the_blacklist_stays_bounded() -> None:
    clock = Clock()
    blacklist = Blacklist(threshold=2, timeout=10.0, capacity=100, clock=clock)
    for n in range(1000):
        blacklist.failed(f"10.0.{n // 250}.{n % 250}")
    assert len(blacklist) == 100
    clock.now += 1000  # every block over and quiet: forgotten at the next failure
    blacklist.failed("10.9.9.9")
    assert len(blacklist) == 1


def vnc_answer(password: str) -> VncAuthResponse:
    challenge = make_challenge()
    return VncAuthResponse(challenge, encrypt_challenge(password, challenge))


def verdict(credentials: Credentials, host: str, given: VncAuthResponse) -> str | None:
    results: list[str | None] = []
    credentials.check(host, given).addCallback(results.append)
    assert len(results) == 1  # VNC passwords are checked at once
    return results[0]


def test_wrong_vnc_passwords_block_their_source_and_are_audited() -> None:
    clock = Clock()
    audit: list[tuple[str, str, str]] = []
    credentials = Credentials(
        "s3cret!",
        blacklist=Blacklist(threshold=5, timeout=10.0, clock=clock),
        audit=lambda *row: audit.append(row),
    )
    for _ in range(5):
        assert verdict(credentials, "10.0.0.9", vnc_answer("guess")) == "Wrong password."
    refused = verdict(credentials, "10.0.0.9", vnc_answer("s3cret!"))
    assert refused is not None and "try again in 10 seconds" in refused  # not even checked
    assert verdict(credentials, "10.0.0.8", vnc_answer("s3cret!")) is None  # another source
    assert [a for _, a, _ in audit] == ["auth-failed"] * 5 + ["auth-refused"]
    assert "blocked for 10 s" in audit[4][2]
    # Guesses from one source in a minute: 5, then one every doubled block.
    checked = 5
    for _ in range(60):
        clock.now += 1
        if credentials.blacklist.wait("10.0.0.9") == 0:
            verdict(credentials, "10.0.0.9", vnc_answer("guess"))
            checked += 1
    assert checked <= 8


def refused_with(reason: str, client_version: bytes) -> str:
    """What an RFB client reads from a Refusal (thinserve's own client role)."""
    transport = StringTransport()
    refusal = Refusal(reason)
    refusal.makeConnection(transport)
    client = ClientHandshake()
    client.receive_data(transport.value())
    transport.clear()
    refusal.dataReceived(client_version)
    with pytest.raises(ConnectionFailed) as failed:
        client.receive_data(transport.value())
    refusal.connectionLost()
    assert transport.disconnecting
    return failed.value.server_reason


def test_a_connection_past_a_cap_is_told_why_in_rfb() -> None:
    assert refused_with("Too many connections", Version.V3_8.value) == "Too many connections"
    transport = StringTransport()  # an RFB 3.3 client: U32 type 0, then the reason (rfbproto)
    refusal = Refusal("Busy")
    refusal.makeConnection(transport)
    refusal.dataReceived(Version.V3_3.value)
    assert transport.value() == Version.V3_8.value + bytes(4) + (4).to_bytes(4, "big") + b"Busy"
    refusal.connectionLost()


def test_caps_count_per_address_and_in_total() -> None:
    admission = Admission(max_total=3, max_per_address=2)
    for host in ("10.0.0.1", "10.0.0.1"):
        assert admission.refusal(host) is None
        admission.opened(host)
    refusal = admission.refusal("10.0.0.1")
    assert refusal is not None and "Too many connections from 10.0.0.1" in refusal
    admission.opened("10.0.0.2")
    full = admission.refusal("10.0.0.3")
    assert full is not None and "3 connections, its maximum" in full
    admission.closed("10.0.0.1")
    assert admission.refusal("10.0.0.1") is None and admission.total == 2
    admission.closed("10.0.0.1")
    assert "10.0.0.1" not in admission.by_address


def test_limit_config_is_checked() -> None:
    desktops = {"desktop": [{"name": "d", "address": "127.0.0.1:5901"}]}
    config = from_dict({"server": {"max_unpaired": 50, "blacklist_timeout": 2.5}, **desktops})
    assert (config.max_unpaired, config.blacklist_timeout, config.max_connections) == (
        50,
        2.5,
        1000,
    )
    bad_counts = (
        {"max_connections": 0},
        {"max_connections": 2.5},
        {"max_per_address": "many"},
        {"blacklist_threshold": True},
    )
    for bad in bad_counts:
        with pytest.raises(ConfigError, match=r"\[server\] \w+ = .*: a whole number from 1 to"):
            from_dict({"server": bad, **desktops})


def test_terminals_never_paired_are_forgotten_after_a_while() -> None:
    clock = Clock()
    store = SqliteStore()
    broker = Broker(store, BrokerConfig(forget_unpaired_after=3600.0), clock=clock)
    broker.register_desktop("d1", "xvnc")
    store.upsert_terminal(Terminal("old-unpaired", last_seen=clock.now - 7200))
    store.upsert_terminal(Terminal("old-paired", last_seen=clock.now - 7200))
    store.pair(Pairing("old-paired", "d1", clock.now, "admin"))
    store.upsert_terminal(Terminal("recent", last_seen=clock.now - 60))
    broker.terminal_connected("connected-long", TerminalInfo())
    store.upsert_terminal(Terminal("connected-long", last_seen=clock.now - 7200))
    broker.tick()
    assert [t.id for t in store.list_terminals()] == ["connected-long", "old-paired", "recent"]


def test_drawn_screens_are_shared_and_cost_a_waiting_terminal_no_pixels() -> None:
    text = screens.pairing("viewer-10.0.0.5~abcdef", "K7D-Q2M")
    first = drawn.DrawnScreen(text, 1024, 768)
    second = drawn.DrawnScreen(screens.pairing("viewer-10.0.0.5~abcdef", "K7D-Q2M"), 1024, 768)
    assert first.framebuffer is second.framebuffer  # one picture for the same screen
    assert not first.framebuffer.flags.writeable
    assert (first.width, first.height) == (1024, 768)
    expected = screens.render(text, 1024, 768)  # drawn again, independently
    assert (first.framebuffer == expected).all()
    assert not any(
        hasattr(value, "nbytes") and value.nbytes > 1024 for value in vars(first).values()
    )
