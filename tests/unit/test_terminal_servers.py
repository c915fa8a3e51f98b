"""The software terminal with several servers: parsed in order, tried in turn,
and "Reconnecting..." on its status screen once a session was lost."""

from __future__ import annotations

import pytest
from twisted.internet import protocol
from twisted.internet.task import Clock

from clients.terminal.dialer import RECONNECTING, WAITING, DialMode
from clients.terminal.options import MAX_SERVERS, parse_args


def test_connect_repeated_gives_every_server_in_order_once() -> None:
    options = parse_args(["--connect", "ts-1:5901", "--server", "ts-2", "--connect", "ts-1:5901"])
    assert options.mode == "connect"
    assert options.servers == (("ts-1", 5901), ("ts-2", 5900))
    assert (options.host, options.port) == ("ts-1", 5901)


def test_too_many_servers_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([arg for n in range(MAX_SERVERS + 1) for arg in ("--connect", f"h{n}")])
    assert f"give at most {MAX_SERVERS}" in capsys.readouterr().err


def test_a_lost_session_says_reconnecting_and_names_the_next_server() -> None:
    clock = Clock()
    servers = [("127.0.0.1", 1), ("127.0.0.1", 2)]
    mode = DialMode(clock, protocol.Factory(), lambda: servers, "key-x", lambda: [], "")
    mode.target, mode.attempts = servers[0], 1  # connected to the first
    mode._connected(object())
    assert mode.status()[0] == WAITING
    mode.session_ended(30.0, "connection lost")
    title, lines = mode.status()
    assert title == RECONNECTING
    assert "Lost the connection to 127.0.0.1:1" in lines
    assert "Server: 127.0.0.1:2" in lines
    mode.stop()
