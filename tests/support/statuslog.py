"""A record of the statuses a desktop backend reports, and a wait for one of them."""

from __future__ import annotations

from dataclasses import dataclass, field

from thinserve.desktop_state import DesktopState

from .waiting import wait_until


@dataclass
class StatusLog:
    """Every (desktop, status, detail) a backend reported, in order (its ``on_status``)."""

    entries: list[tuple[str, DesktopState, str]] = field(default_factory=list)

    def __call__(self, desktop: str, status: DesktopState, detail: str) -> None:
        self.entries.append((desktop, status, detail))

    def statuses(self, desktop: str) -> list[DesktopState]:
        return [status for name, status, _ in self.entries if name == desktop]

    async def wait_for(
        self, desktop: str, status: DesktopState, timeout: float, after: int = 0
    ) -> str:
        """Wait for ``status`` among the entries from index ``after``; return its detail."""

        def found() -> tuple[str] | None:
            for name, seen, detail in self.entries[after:]:
                if name == desktop and seen is status:
                    return (detail,)
            return None

        (detail,) = await wait_until(
            found, timeout, lambda: f"{desktop} to become {status}: {self.entries}"
        )
        return detail
