"""The admin API's audit pages: newest first pages, before an id, filtered."""

from __future__ import annotations

from thinserve.admin.audit import latest_audit
from thinserve.store.sqlite import SqliteStore


def _store(entries: int) -> SqliteStore:
    store = SqliteStore()
    for n in range(1, entries + 1):
        actor = "web:ann" if n % 3 == 0 else "admin:root"
        store.append_audit(float(n), actor, "pair" if n % 2 else "kick", f"t{n % 5}")
    return store


def test_pages_go_back_from_the_newest() -> None:
    store = _store(120)
    newest = latest_audit(store, 50)
    assert [e.id for e in newest] == list(range(71, 121))
    older = latest_audit(store, 50, before=newest[0].id)
    assert [e.id for e in older] == list(range(21, 71))
    oldest = latest_audit(store, 50, before=older[0].id)
    assert [e.id for e in oldest] == list(range(1, 21))


def test_actor_and_action_filter_the_whole_log_not_one_page() -> None:
    store = _store(1200)  # more than one of the store's pages
    keep = lambda e: "ann" in e.actor and e.action == "kick"  # noqa: E731
    found = latest_audit(store, 1000, keep=keep)
    expected = [n for n in range(1, 1201) if n % 6 == 0]  # ann's kicks: 200 of them
    assert [e.id for e in found] == expected
    before = latest_audit(store, 10, keep=keep, before=600)
    assert [e.id for e in before] == [n for n in expected if n < 600][-10:]
    with_subject = latest_audit(store, 5, subject="t0", keep=keep)
    assert [e.id for e in with_subject] == [n for n in expected if n % 5 == 0][-5:]
