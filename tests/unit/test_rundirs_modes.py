"""A refused socket's directories, described: which of them said no."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

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
