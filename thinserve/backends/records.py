"""The record of a running desktop, so the next thinserve finds it again.

A desktop thinserve started (an Xvnc session, a QEMU VM) keeps running
when thinserve stops.  While it runs, ``<state_dir>/desktops/<name>.json``
says what it is: its processes (pid and start time, so a reused pid is
never mistaken for it), its sockets, display, account and directories.  The
file is written whole or not at all (a temporary file renamed over it),
readable only by thinserve's user (0600), and removed when the desktop
ends.  A file that cannot be read back (too large, not JSON, a field
missing or of the wrong type) is logged, removed and ignored: the desktop
then starts afresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pidwatch import boot_id, end_recorded, same_process

log = logging.getLogger(__name__)

VERSION = 1
MAX_RECORD_BYTES = 64 << 10
MAX_ITEMS = 16  # processes or directories in one record


class RecordError(ValueError):
    """A record file that cannot be used; the message says why."""


@dataclass(frozen=True)
class RecordedProcess:
    """One process of a desktop: its role ("xvnc", "session", "qemu"), pid, start time."""

    role: str
    pid: int
    start: int

    def alive(self) -> bool:
        """True when the pid is still this very process."""
        return same_process(self.pid, self.start)


@dataclass(frozen=True)
class DesktopRecord:
    """What a running desktop is, as its record file says."""

    name: str
    backend: str  # "xvnc" or "qemu"
    processes: tuple[RecordedProcess, ...]
    vnc_socket: str
    summary: str = ""  # its RUNNING detail
    qmp_socket: str | None = None  # a QMP server socket to connect to
    display: int | None = None
    user: str | None = None  # the account the desktop runs as
    uid: int | None = None
    run_dirs: tuple[str, ...] = ()
    overlay: str | None = None
    boot: str = field(default_factory=boot_id)

    def process(self, role: str) -> RecordedProcess | None:
        return next((p for p in self.processes if p.role == role), None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"version": VERSION, **self.__dict__}
        data["processes"] = [p.__dict__ for p in self.processes]
        data["run_dirs"] = list(self.run_dirs)
        return data


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RecordError(f"field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _process(item: object) -> RecordedProcess:
    if not isinstance(item, dict):
        raise RecordError("a process is not an object")
    pid = _get(item, "pid", int, False)
    start = _get(item, "start", int, False)
    if pid <= 1 or start < 0:
        raise RecordError(f"process pid {pid}, start {start} cannot be a desktop's")
    return RecordedProcess(_get(item, "role", str, False), pid, start)


def from_json(data: object) -> DesktopRecord:
    """The record in parsed JSON ``data``; RecordError when anything is off."""
    if not isinstance(data, dict):
        raise RecordError("not a JSON object")
    if data.get("version") != VERSION:
        raise RecordError(f"version {data.get('version')!r}, not {VERSION}")
    processes = _get(data, "processes", list, False)
    run_dirs = _get(data, "run_dirs", list, False)
    if not processes or len(processes) > MAX_ITEMS or len(run_dirs) > MAX_ITEMS:
        raise RecordError(f"between 1 and {MAX_ITEMS} processes and directories")
    if not all(isinstance(d, str) for d in run_dirs):
        raise RecordError("run_dirs must be paths")
    return DesktopRecord(
        name=_get(data, "name", str, False),
        backend=_get(data, "backend", str, False),
        processes=tuple(_process(p) for p in processes),
        vnc_socket=_get(data, "vnc_socket", str, False),
        summary=_get(data, "summary", str, False),
        qmp_socket=_get(data, "qmp_socket", str, True),
        display=_get(data, "display", int, True),
        user=_get(data, "user", str, True),
        uid=_get(data, "uid", int, True),
        run_dirs=tuple(run_dirs),
        overlay=_get(data, "overlay", str, True),
        boot=_get(data, "boot", str, False),
    )


class RecordStore:
    """The records of running desktops: one file per desktop in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def save(self, record: DesktopRecord) -> None:
        """Write ``record`` atomically (temporary file, fsync, rename), 0600. Raises OSError."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(record.to_json(), indent=1).encode()
        fd, temporary = tempfile.mkstemp(prefix=f".{record.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as file:  # mkstemp made it 0600
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path(record.name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def load(self, name: str) -> DesktopRecord | None:
        """The record of ``name``; None when there is none or it is unusable (logged, removed)."""
        path = self.path(name)
        try:
            record = self._read(path)
        except FileNotFoundError:
            return None
        except (OSError, RecordError) as exc:
            log.warning(
                "desktop %s: ignoring and removing its record %s (%s); the desktop starts afresh",
                name,
                path,
                exc,
            )
            self.remove(name)
            return None
        if record.name != name:
            log.warning("desktop %s: its record %s names %s; removing it", name, path, record.name)
            self.remove(name)
            return None
        return record

    @staticmethod
    def _read(path: Path) -> DesktopRecord:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RecordError("not a regular file")
            raw = file.read(MAX_RECORD_BYTES + 1)
        if len(raw) > MAX_RECORD_BYTES:
            raise RecordError(f"larger than {MAX_RECORD_BYTES} bytes")
        try:
            data = json.loads(raw.decode())
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError, JSONDecodeError
            raise RecordError(f"not JSON: {exc}") from None
        return from_json(data)

    def remove(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.path(name).unlink()

    def names(self) -> list[str]:
        """The desktops with a record file."""
        try:
            return sorted(p.stem for p in self.directory.glob("*.json"))
        except OSError:
            return []


def records_in(state_dir: Path) -> RecordStore:
    """The records of the desktops of the thinserve whose state directory is ``state_dir``."""
    return RecordStore(state_dir / "desktops")


async def end_desktop(record: DesktopRecord) -> None:
    """End every process ``record`` names that is still that process (and its group)."""
    for process in record.processes:
        await end_recorded(process.pid, process.start)
