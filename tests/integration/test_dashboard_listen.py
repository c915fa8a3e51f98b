"""Where the dashboard listens: a taken default port turns it off, a taken
configured port stops the start, and beyond loopback it is HTTPS only."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.internet.error import CannotListenError

from tests.support.ports import free_tcp_port
from thinserve.config import Config
from thinserve.dashboard.wiring import Dashboard
from thinserve.service import ThinServe

DEFAULT_PORT = 5880


def config(tmp_path: Path, dashboard: tuple[str, ...] = Config.dashboard_listen) -> Config:
    return Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        dashboard_listen=dashboard,
        database=str(tmp_path / "thinserve.db"),
        admin_socket="",
        discovery=False,
        desktops=(),
        local_desktops=(),
        state_dir=tmp_path / "state",
        runtime_dir=tmp_path / "run",
        source="test",
    )


@contextmanager
def held(port: int) -> Iterator[None]:
    """Port ``port`` on loopback taken by another program (or already taken)."""
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", port))
        holder.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        holder.close()


def rfb_banner(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        return connection.recv(12)


@pytest_twisted.ensureDeferred
async def test_a_taken_default_port_turns_the_dashboard_off_and_thinserve_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "thinserve.service")
    with held(DEFAULT_PORT):
        ts = ThinServe(config(tmp_path), reactor)
        await ts.startService()
        try:
            assert not [part for part in ts if isinstance(part, Dashboard)]
            assert len(ts.ports) == 1  # the terminals' port only
            banner = await threads.deferToThread(rfb_banner, ts.port_numbers[0])
            assert banner.startswith(b"RFB 003.")
            said = [r.getMessage() for r in caplog.records if "dashboard off" in r.getMessage()]
            assert said and "set dashboard_listen" in said[0], said
        finally:
            await ts.stopService()


@pytest_twisted.ensureDeferred
async def test_a_configured_port_that_is_taken_stops_the_start(tmp_path: Path) -> None:
    port = free_tcp_port()
    with held(port):
        ts = ThinServe(config(tmp_path, (f"tcp:port={port}:interface=127.0.0.1",)), reactor)
        try:
            with pytest.raises(CannotListenError):
                await ts.startService()
        finally:
            await ts.stopService()


def get(port: int, path: str, secure: bool) -> tuple[int, str, dict[str, object]]:
    """(status, Set-Cookie, JSON) of a GET to 127.0.0.1:``port``."""
    if secure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the server's own self-made certificate
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=20, context=context
        )
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader("Set-Cookie") or "", json.loads(answer.read())
    finally:
        connection.close()


def login(port: int, name: str, password: str) -> tuple[int, str]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
    try:
        body = json.dumps({"name": name, "password": password})
        connection.request(
            "POST", "/api/v1/login", body, headers={"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        answer.read()
        return answer.status, answer.getheader("Set-Cookie") or ""
    finally:
        connection.close()


@pytest_twisted.ensureDeferred
async def test_beyond_loopback_the_dashboard_is_https_only(tmp_path: Path) -> None:
    ts = ThinServe(config(tmp_path, ("tcp:port=0:interface=0.0.0.0",)), reactor)
    await ts.startService()
    try:
        (dashboard,) = [part for part in ts if isinstance(part, Dashboard)]
        port = ts.port_numbers[-1]
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            await threads.deferToThread(get, port, "/api/v1/session", False)
        status, _, body = await threads.deferToThread(get, port, "/api/v1/session", True)
        assert (status, body["code"]) == (401, "unauthenticated")
        await dashboard.admin.accounts.add("ann", "a long password", "admin", "test")
        status, cookie = await threads.deferToThread(login, port, "ann", "a long password")
        assert status == 200
        attributes = {part.strip() for part in cookie.split(";")[1:]}
        assert {"HttpOnly", "SameSite=Strict", "Secure", "Path=/"} <= attributes, cookie
    finally:
        await ts.stopService()
