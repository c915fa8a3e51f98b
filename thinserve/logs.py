"""Where thinserve's log goes, and in what form.

Three forms, chosen by ``--log-format`` (``auto`` by default):

  journal  systemd's journal, by its native protocol: one datagram per record
           of FIELD=value lines, so the priority, the code location and
           thinserve's own fields (THINSERVE_TERMINAL, _DESKTOP, _USER,
           _EVENT) stay searchable (``journalctl THINSERVE_TERMINAL=...``).
  text     a line per record, for people at a terminal.
  json     an object per line (time, level, logger, message, fields), for
           log shippers.

``auto`` picks the journal when stderr is the journal's stream (systemd sets
$JOURNAL_STREAM to its device and inode), text on a terminal, else json.

A log call names what it is about with ``extra=logs.fields(terminal=...,
desktop=..., user=..., event=...)``.

Libraries' noise: zeroconf logs a full traceback at WARNING whenever a
network (typically IPv6) is unreachable; those records go out at DEBUG.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

FORMATS = ("auto", "text", "json", "journal")
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
IDENTIFIER = "thinserve"
FIELD_NAMES = ("terminal", "desktop", "user", "event")
RECORD_ATTRIBUTE = "thinserve_fields"  # where fields() puts them on a LogRecord
MAX_VALUE = 60_000  # bytes of one journal field; the datagram must fit the socket's buffer
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY_LIBRARIES = ("zeroconf",)

# syslog priorities (sd-daemon.h) for Python's levels
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def fields(
    *,
    terminal: object = None,
    desktop: object = None,
    user: object = None,
    event: object = None,
) -> dict[str, dict[str, str]]:
    """The ``extra=`` of a log call about a terminal, desktop, user or event."""
    given = {"terminal": terminal, "desktop": desktop, "user": user, "event": event}
    return {RECORD_ATTRIBUTE: {k: str(v) for k, v in given.items() if v is not None}}


def record_fields(record: logging.LogRecord) -> dict[str, str]:
    """The fields a record carries (none when logged without ``fields``)."""
    found = getattr(record, RECORD_ATTRIBUTE, None)
    return dict(found) if isinstance(found, Mapping) else {}


# -- choosing -------------------------------------------------------------------------------
def setup(
    level: str,
    log_format: str = "auto",
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
    force: bool = False,
) -> logging.Handler | None:
    """Send the root logger's records at ``level`` and above to ``log_format``.

    When the root logger has handlers already (a test runner's) only the
    level is set, unless ``force``; returns the handler installed, if any.
    """
    root = logging.getLogger()
    threshold = getattr(logging, level.upper())
    root.setLevel(threshold)
    if root.handlers and not force:
        return None
    stream = sys.stderr if stream is None else stream
    handler = make_handler(chosen_format(log_format, stream, environ), stream, journal_socket)
    handler.addFilter(LibraryNoise(threshold))
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    return handler


def chosen_format(
    log_format: str, stream: IO[str], environ: Mapping[str, str] | None = None
) -> str:
    """``auto`` made concrete: journal, text or json."""
    if log_format != "auto":
        return log_format
    if under_journal(stream, environ):
        return "journal"
    return "text" if _isatty(stream) else "json"


def under_journal(stream: IO[str], environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal's stream systemd connected ($JOURNAL_STREAM)."""
    environ = os.environ if environ is None else environ
    device, _, inode = (environ.get(JOURNAL_STREAM_ENV) or "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


def make_handler(log_format: str, stream: IO[str], journal_socket: Path) -> logging.Handler:
    text = logging.StreamHandler(stream)
    text.setFormatter(logging.Formatter(TEXT_FORMAT))
    if log_format == "text":
        return text
    if log_format == "json":
        lines = logging.StreamHandler(stream)
        lines.setFormatter(JsonFormatter())
        return lines
    if log_format == "journal":
        return JournalHandler(journal_socket, fallback=text)
    raise ValueError(f"unknown log format {log_format!r}; one of {', '.join(FORMATS)}")


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (ValueError, AttributeError):
        return False


# -- library noise --------------------------------------------------------------------------
class LibraryNoise(logging.Filter):
    """Tracebacks from the noisy libraries' loggers, demoted to DEBUG.

    The record itself is changed, so a handler that reads it afterwards
    sees DEBUG too; it passes only when DEBUG is wanted.
    """

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG and record.exc_info and _is_noisy(record.name):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return self.threshold <= logging.DEBUG
        return True


def _is_noisy(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in NOISY_LIBRARIES)


# -- JSON lines -----------------------------------------------------------------------------
class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(record_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def _utc(created: float) -> str:
    moment = datetime.datetime.fromtimestamp(created, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the journal ----------------------------------------------------------------------------
class JournalHandler(logging.Handler):
    """Records to journald's native socket; to ``fallback`` when it cannot be reached."""

    def __init__(self, path: Path = JOURNAL_SOCKET, fallback: logging.Handler | None = None):
        super().__init__()
        self.path = path
        self.fallback = fallback
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.formatter = logging.Formatter("%(name)s: %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            datagram = journal_datagram(self.entry(record))
        except Exception:
            self.handleError(record)
            return
        try:
            self.sock.sendto(datagram, str(self.path))
        except OSError:
            if self.fallback is not None:
                self.fallback.handle(record)

    def entry(self, record: logging.LogRecord) -> dict[str, str]:
        """The journal fields of ``record``; the message holds its exception, no time."""
        entry = {
            "MESSAGE": self.format(record),
            "PRIORITY": str(priority(record.levelno)),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        for name, value in record_fields(record).items():
            entry[f"THINSERVE_{name.upper()}"] = value
        return entry

    def close(self) -> None:
        self.sock.close()
        super().close()


def priority(levelno: int) -> int:
    """The syslog priority of a Python log level."""
    for level, prio in _PRIORITIES:
        if levelno >= level:
            return prio
    return 7


def journal_datagram(entry: Mapping[str, str]) -> bytes:
    """journald's native form: NAME=value lines; a value holding a newline is
    written NAME, newline, its length (64-bit little endian), the value, newline."""
    parts = []
    for name, value in entry.items():
        data = _bounded(value.encode("utf-8", "replace"))
        key = name.encode("ascii")
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


def _bounded(data: bytes) -> bytes:
    if len(data) <= MAX_VALUE:
        return data
    return data[:MAX_VALUE] + " … (cut)".encode()
