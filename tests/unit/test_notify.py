"""sd_notify messages, received on a real datagram socket as systemd would."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinserve.notify import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def message(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    assert data.endswith("\n")
    return dict(line.split("=", 1) for line in data.splitlines())


def test_ready_reloading_stopping(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready("terminals on 127.0.0.1:5900\nand more")
    assert message(sock) == {"READY": "1", "STATUS": "terminals on 127.0.0.1:5900 and more"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    reloading = message(sock)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    notifier.stopping()
    assert message(sock)["STOPPING"] == "1"


def test_an_abstract_socket_is_written_with_an_at_sign() -> None:
    name = f"thinserve-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier(f"@{name}").send({"READY": "1"})
        assert message(sock) == {"READY": "1"}


def test_without_a_socket_nothing_is_sent(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).send({"READY": "1"})
    assert not Notifier(str(tmp_path / "gone")).send({"READY": "1"})  # no error either
