"""Log forms: the journal's native protocol, JSON lines, and library noise."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from thinserve import logs


def parse_datagram(data: bytes) -> dict[str, bytes]:
    """journald's native form, read back: NAME=value lines, or NAME, length, bytes."""
    fields: dict[str, bytes] = {}
    while data:
        line, _, rest = data.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            data = rest
        else:
            name = line
            (size,) = struct.unpack("<Q", rest[:8])
            value = rest[8 : 8 + size]
            assert rest[8 + size : 9 + size] == b"\n"
            data = rest[9 + size :]
        fields[name.decode()] = value
    return fields


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()


def a_logger(handler: logging.Handler, name: str = "thinserve.test") -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_the_journal_gets_fields_priority_and_the_traceback(
    journal: tuple[socket.socket, Path],
) -> None:
    sock, path = journal
    handler = logs.JournalHandler(path)
    log = a_logger(handler)
    try:
        line = sys._getframe().f_lineno + 1
        log.warning(
            "terminal %s paired",
            "tk-1",
            extra=logs.fields(terminal="tk-1", desktop="d1", event="paired"),
        )
        entry = parse_datagram(sock.recv(65536))
        assert entry["MESSAGE"] == b"thinserve.test: terminal tk-1 paired"
        assert entry["PRIORITY"] == b"4"
        assert entry["SYSLOG_IDENTIFIER"] == b"thinserve"
        assert entry["CODE_FILE"] == __file__.encode()
        assert entry["CODE_LINE"] == str(line).encode()
        assert entry["CODE_FUNC"] == b"test_the_journal_gets_fields_priority_and_the_traceback"
        assert entry["THINSERVE_TERMINAL"] == b"tk-1"
        assert entry["THINSERVE_DESKTOP"] == b"d1"
        assert entry["THINSERVE_EVENT"] == b"paired"
        assert "THINSERVE_USER" not in entry
        try:
            raise ValueError("line one\nline two")
        except ValueError:
            log.exception("it broke")
        raw = sock.recv(65536)
        assert b"MESSAGE\n" in raw  # a value with newlines: the length-prefixed form
        broken = parse_datagram(raw)
        assert broken["PRIORITY"] == b"3"
        message = broken["MESSAGE"].decode()
        assert message.startswith("thinserve.test: it broke\nTraceback")
        assert message.endswith("ValueError: line one\nline two")
        log.debug("quiet")
        assert parse_datagram(sock.recv(65536))["PRIORITY"] == b"7"
    finally:
        handler.close()


def test_the_journal_gone_falls_back_to_text(tmp_path: Path) -> None:
    out = io.StringIO()
    fallback = logging.StreamHandler(out)
    handler = logs.JournalHandler(tmp_path / "no-journal", fallback=fallback)
    try:
        a_logger(handler).info("still seen")
    finally:
        handler.close()
    assert "still seen" in out.getvalue()


def test_json_lines_parse_back(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logs.make_handler("json", out, tmp_path / "unused")
    log = a_logger(handler)
    log.info("user %s logged in", "ann", extra=logs.fields(user="ann", desktop="d2"))
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.error("failed", exc_info=True)
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "user ann logged in"
    assert (first["level"], first["logger"]) == ("INFO", "thinserve.test")
    assert (first["user"], first["desktop"]) == ("ann", "d2")
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert "exception" not in first
    assert second["level"] == "ERROR" and "ZeroDivisionError" in second["exception"]


def test_zeroconf_tracebacks_are_demoted_and_nothing_else_is(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logs.make_handler("json", out, tmp_path / "unused")
    handler.addFilter(logs.LibraryNoise(logging.INFO))
    zeroconf = a_logger(handler, "zeroconf")
    ours = a_logger(handler, "thinserve.test")
    try:
        raise OSError(101, "Network is unreachable")
    except OSError:
        zeroconf.warning("Error sending through socket 7", exc_info=True)
        ours.warning("ours, with its traceback", exc_info=True)
    zeroconf.warning("zeroconf without a traceback")
    levels = [(e["logger"], e["level"]) for e in map(json.loads, out.getvalue().splitlines())]
    assert levels == [
        ("thinserve.test", "WARNING"),
        ("zeroconf", "WARNING"),
    ]
    out.seek(0)
    out.truncate(0)
    handler.filters = [logs.LibraryNoise(logging.DEBUG)]
    try:
        raise OSError(101, "Network is unreachable")
    except OSError:
        zeroconf.warning("Error sending through socket 7", exc_info=True)
    (entry,) = map(json.loads, out.getvalue().splitlines())
    assert entry["level"] == "DEBUG" and "Network is unreachable" in entry["exception"]


def test_auto_picks_the_journal_on_its_stream_text_on_a_tty_else_json(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        assert (
            logs.chosen_format("auto", stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
            == "journal"
        )
        assert logs.chosen_format("auto", stream, {"JOURNAL_STREAM": f"{st.st_dev}:1"}) == "json"
        assert logs.chosen_format("auto", stream, {}) == "json"
        assert logs.chosen_format("text", stream, {}) == "text"
    primary, secondary = os.openpty()
    with os.fdopen(secondary, "w") as tty:
        assert logs.chosen_format("auto", tty, {}) == "text"
    os.close(primary)
    assert logs.chosen_format("auto", io.StringIO(), {}) == "json"  # no file descriptor


def test_setup_installs_the_chosen_handler(journal: tuple[socket.socket, Path]) -> None:
    sock, path = journal
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        handler = logs.setup("warning", "journal", journal_socket=path, force=True)
        assert root.handlers == [handler] and root.level == logging.WARNING
        logging.getLogger("thinserve.x").info("not wanted")
        logging.getLogger("thinserve.x").warning("wanted")
        assert parse_datagram(sock.recv(65536))["MESSAGE"] == b"thinserve.x: wanted"
    finally:
        if handler is not None:
            handler.close()
        root.handlers, level = saved
        root.setLevel(level)
