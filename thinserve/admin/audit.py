"""The newest audit entries, from a Store that lists them oldest first."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from ..store.base import AuditEntry, Store

AUDIT_PAGE = 500


def latest_audit(
    store: Store,
    limit: int,
    subject: str | None = None,
    before: int | None = None,
    keep: Callable[[AuditEntry], bool] | None = None,
) -> list[AuditEntry]:
    """The newest ``limit`` audit entries (older than id ``before``, if
    given, and those ``keep`` accepts), oldest first: the next page back
    starts before the first one.

    The Store lists entries oldest first after an id, so find the newest id
    (a logarithmic search) and read back from there; with a subject or a
    filter, page through the entries keeping only the tail.
    """
    if subject is not None or keep is not None:
        tail: deque[AuditEntry] = deque(maxlen=limit)
        after = 0
        while page := store.list_audit(after_id=after, limit=AUDIT_PAGE, subject=subject):
            tail.extend(
                e for e in page if (before is None or e.id < before) and (keep is None or keep(e))
            )
            after = page[-1].id
            if before is not None and after >= before:
                break
        return list(tail)
    last = _last_audit_id(store) if before is None else before - 1
    entries = store.list_audit(after_id=max(0, last - limit), limit=limit)
    return [e for e in entries if e.id <= last]


def _last_audit_id(store: Store) -> int:
    def first_after(entry_id: int) -> int | None:
        found = store.list_audit(after_id=entry_id, limit=1)
        return found[0].id if found else None

    low = first_after(0)  # an id that exists; the newest is >= low
    if low is None:
        return 0
    high = low * 2  # no id above high once the doubling stops
    while (found := first_after(high)) is not None:
        low, high = found, found * 2
    while (after_low := first_after(low)) is not None:
        low = after_low
        middle = (low + high) // 2
        found = first_after(middle)
        if found is None:
            high = middle
        else:
            low = found
    return low
