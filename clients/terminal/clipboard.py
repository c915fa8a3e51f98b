"""The terminal's local clipboard: SDL's, or a file when headless.

``put`` stores text that came from the server; ``changed`` returns text the
user put on the local clipboard since the last look (None if nothing new),
never echoing back what ``put`` stored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import pygame

log = logging.getLogger(__name__)


class LocalClipboard(Protocol):
    def put(self, text: str) -> None: ...
    def changed(self) -> str | None: ...


class SDLClipboard:
    """The desktop clipboard through SDL (pygame.scrap's text functions)."""

    def __init__(self) -> None:
        self.last = self._read()

    def put(self, text: str) -> None:
        try:
            pygame.scrap.put_text(text)
        except pygame.error as exc:
            log.warning("cannot set the local clipboard: %s", exc)
            return
        self.last = text

    def changed(self) -> str | None:
        text = self._read()
        if not text or text == self.last:
            return None
        self.last = text
        return text

    def _read(self) -> str:
        try:
            return pygame.scrap.get_text() or ""
        except pygame.error:
            return ""


class FileClipboard:
    """A headless clipboard: server text is written to a file (atomically)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.text: str | None = None

    def put(self, text: str) -> None:
        self.text = text
        if self.path is None:
            log.info("clipboard from the server: %d characters", len(text))
            return
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, self.path)

    def changed(self) -> str | None:
        return None  # scripted: the script's clipboard command sends text
