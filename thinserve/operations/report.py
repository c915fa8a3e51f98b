"""One doctor check's outcome: OK, WARN or FAIL, what was found, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """``fix`` is a command (or a short instruction) that mends a WARN or FAIL."""

    name: str
    status: str
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def lines(self) -> list[str]:
        """How a person reads it: the status, the check, what was found; the fix below."""
        first = f"{self.status:<4} {self.name}: {self.message}"
        return [first, f"     fix: {self.fix}"] if self.fix and self.status != OK else [first]


def ok(name: str, message: str) -> Check:
    return Check(name, OK, message)


def warn(name: str, message: str, fix: str) -> Check:
    return Check(name, WARN, message, fix)


def fail(name: str, message: str, fix: str) -> Check:
    return Check(name, FAIL, message, fix)


def problem(name: str, fatal: bool, message: str, fix: str) -> Check:
    """FAIL when the configuration needs what is missing, else WARN."""
    return Check(name, FAIL if fatal else WARN, message, fix)
