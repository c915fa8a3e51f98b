"""The terminal's stable id: made once, kept in a file, reused forever.

thinserve recognises a terminal by the ``id`` of its advert (see
docs/terminal-advert.md), so the id must survive restarts, new addresses
and new software.  It is a random UUID written to
``$XDG_CONFIG_HOME/thinserve-terminal/id`` (mode 0600) the first time the
terminal starts.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

from protocols.terminal import AdvertError, parse_id

log = logging.getLogger(__name__)

APP_DIR = "thinserve-terminal"
ID_FILE = "id"


def default_id_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/thinserve-terminal/id``, with ``~/.config`` as the default home."""
    config = environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / APP_DIR / ID_FILE


def checked_id(text: str) -> str:
    """An id as the advert contract wants it (lower case); ValueError if it breaks it."""
    try:
        return parse_id(text.strip())
    except AdvertError as exc:
        raise ValueError(exc.reason) from None


def load_or_create_id(path: Path) -> str:
    """The id stored at ``path``; a new one is made and stored if there is none."""
    existing = _read(path)
    if existing is not None:
        return existing
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = str(uuid.uuid4())
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(fresh + "\n")
        _install(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    stored = _read(path)
    if stored is None:
        raise OSError(f"cannot keep a terminal id in {path}")
    return stored


def _install(temporary: Path, path: Path) -> None:
    """Put the new file in place; a valid id another process stored first wins."""
    try:
        os.link(temporary, path)
    except FileExistsError:
        if _read(path) is None:  # a broken file: replace it
            log.warning("replacing the unusable terminal id in %s", path)
            os.replace(temporary, path)


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    try:
        return checked_id(text)
    except ValueError as exc:
        log.warning("terminal id file %s is unusable: %s", path, exc)
        return None
