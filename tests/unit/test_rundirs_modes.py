"""A refused socket's directories, described: which of them said no."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from thinserve.backends import rundirs
from thinserve.backends.rundirs import describe_modes


def test_each_directory_above_the_socket_is_named_with_its_mode_and_owner(
    tmp_path: Path,
) -> None:
    sockets = tmp_path / "sockets"
    desk = sockets / "desk"
    desk.mkdir(parents=True)
    os.chmod(sockets, 0o711)
    os.chmod(desk, 0o700)
    me = pwd.getpwuid(os.getuid()).pw_name
    text = describe_modes(desk, levels=2)
    assert text == f"{sockets} 0711 {me}:{os.getgid()}, {desk} 0700 {me}:{os.getgid()}"


def test_a_directory_that_is_gone_says_so(tmp_path: Path) -> None:
    text = describe_modes(tmp_path / "gone", levels=2)
    assert text.endswith(f"{tmp_path / 'gone'} No such file or directory")
    assert text.startswith(str(tmp_path))


@pytest.mark.parametrize(
    ("switching", "before", "after"),
    [(True, 0o700, 0o711), (True, 0o755, 0o755), (True, 0o750, 0o751), (False, 0o700, 0o700)],
)
def test_the_runtime_directory_is_made_passable_for_sessions_of_other_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switching: bool, before: int, after: int
) -> None:
    """A runtime directory systemd or an earlier command made 0700 would refuse
    a desktop's user its socket below (EACCES): search bits are added where
    sessions run as other users, and nothing else changes."""
    monkeypatch.setattr(rundirs, "can_switch_users", lambda: switching)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=before)
    os.chmod(runtime, before)
    assert rundirs.make_passable(runtime) == runtime
    assert stat.S_IMODE(runtime.stat().st_mode) == after
    fresh = rundirs.make_passable(tmp_path / "new" / "run")
    assert stat.S_IMODE(fresh.stat().st_mode) == (0o711 if switching else 0o700)
