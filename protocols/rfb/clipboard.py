"""Clipboard exchange for either role: plain cut text or Extended Clipboard.

With the Extended Clipboard extension text travels as UTF-8.  This keeps
the little state it needs (the peer's capabilities, the local text offered)
and answers the peer's requests, notifications and peeks by itself.
"""

from __future__ import annotations

from .constants import ClipboardFlag
from .messages import CutText, ExtendedClipboard

ClipboardMessage = CutText | ExtendedClipboard

OUR_ACTIONS = (
    ClipboardFlag.REQUEST | ClipboardFlag.PEEK | ClipboardFlag.NOTIFY | ClipboardFlag.PROVIDE
)


class ClipboardState:
    def __init__(self, from_server: bool, max_text: int) -> None:
        self.from_server = from_server
        self.max_text = max_text
        self.extended = False
        self.peer_actions = 0
        self.peer_text_limit = 0
        self.local_text: str | None = None

    def our_caps(self) -> ExtendedClipboard:
        flags = ClipboardFlag.CAPS | OUR_ACTIONS | ClipboardFlag.TEXT
        return ExtendedClipboard(int(flags), sizes=(self.max_text,), from_server=self.from_server)

    def offer(self, text: str) -> list[ClipboardMessage]:
        """Messages that tell the peer the local clipboard now holds ``text``."""
        self.local_text = text
        if not self.extended:
            return [CutText(text, self.from_server)]
        size = len(text.encode("utf-8")) + 1
        if self.peer_actions & ClipboardFlag.PROVIDE and size <= self.peer_text_limit:
            return [self._provide()]
        return [self._message(ClipboardFlag.NOTIFY | ClipboardFlag.TEXT)]

    def receive(self, msg: ClipboardMessage) -> tuple[list[ClipboardMessage], str | None]:
        """Handle a peer message: (replies to send, text that arrived or None)."""
        if isinstance(msg, CutText):
            return [], msg.text
        action = msg.action
        has_text = bool(msg.flags & ClipboardFlag.TEXT)
        if action == ClipboardFlag.CAPS:
            return self._take_caps(msg), None
        if action == ClipboardFlag.PROVIDE:
            return [], msg.text
        if action == ClipboardFlag.NOTIFY and has_text:
            return [self._message(ClipboardFlag.REQUEST | ClipboardFlag.TEXT)], None
        if action == ClipboardFlag.REQUEST and has_text and self.local_text is not None:
            return [self._provide()], None
        if action == ClipboardFlag.PEEK:
            formats = ClipboardFlag.TEXT if self.local_text is not None else 0
            return [self._message(ClipboardFlag.NOTIFY | formats)], None
        return [], None

    def _take_caps(self, msg: ExtendedClipboard) -> list[ClipboardMessage]:
        first_caps = not self.extended
        self.extended = True
        self.peer_actions = msg.flags & int(OUR_ACTIONS)
        self.peer_text_limit = msg.sizes[0] if msg.flags & ClipboardFlag.TEXT and msg.sizes else 0
        # A client answers the server's capabilities with its own.
        if first_caps and not self.from_server:
            return [self.our_caps()]
        return []

    def _provide(self) -> ExtendedClipboard:
        flags = ClipboardFlag.PROVIDE | ClipboardFlag.TEXT
        return ExtendedClipboard(int(flags), text=self.local_text, from_server=self.from_server)

    def _message(self, flags: int) -> ExtendedClipboard:
        return ExtendedClipboard(int(flags), from_server=self.from_server)
