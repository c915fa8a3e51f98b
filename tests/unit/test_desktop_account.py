"""Who the local desktop runs as, and the default session's script.

The script runs here under the real /bin/sh, with small stand-ins for
icewm-session, icesh and the terminal that record how they were started;
the first-run integration test runs it for real in Xvnc.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.need import need
from thinserve.backends import accounts, default_session
from thinserve.backends.accounts import (
    DESKTOP_ACCOUNT,
    MAKE_DESKTOP_ACCOUNT,
    can_switch_users,
    missing_account,
)
from thinserve.backends.base import BackendError
from thinserve.config import Config, ConfigError, from_dict

# --- capabilities ----------------------------------------------------------------------------


def status_file(tmp_path: Path, effective: str) -> Path:
    path = tmp_path / "status"
    path.write_text(f"Name:\tthinserve\nCapPrm:\t{effective}\nCapEff:\t{effective}\n")
    return path


@pytest.mark.parametrize(
    ("effective", "switches"),
    [
        ("000001ffffffffff", True),  # root
        ("00000000000000c0", True),  # CAP_SETUID and CAP_SETGID only: the packaged service
        ("0000000000000080", False),  # CAP_SETUID alone
        ("0000000000000040", False),  # CAP_SETGID alone
        ("0000000000000000", False),  # an ordinary user
    ],
)
def test_switching_users_takes_setuid_and_setgid(
    tmp_path: Path, effective: str, switches: bool
) -> None:
    assert can_switch_users(status_file(tmp_path, effective)) is switches


def test_without_proc_only_root_switches(tmp_path: Path) -> None:
    assert can_switch_users(tmp_path / "missing") is (os.geteuid() == 0)
    assert can_switch_users(status_file(tmp_path, "not hex")) is (os.geteuid() == 0)


def test_this_process_is_read_from_proc() -> None:
    effective = next(
        line.split()[1]
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("CapEff:")
    )
    assert can_switch_users() is (int(effective, 16) & 0xC0 == 0xC0)


# --- the embedded default and the config file --------------------------------------------------


def test_the_embedded_desktop_runs_as_thinserve_desktop_when_thinserve_can_switch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(accounts, "can_switch_users", lambda: True)
    assert [d.user for d in Config().local_desktops] == [DESKTOP_ACCOUNT]
    monkeypatch.setattr(accounts, "can_switch_users", lambda: False)
    assert [d.user for d in Config().local_desktops] == [None]  # the invoking user


def test_a_local_desktop_names_its_user_and_never_root() -> None:
    table = {"local_desktop": [{"name": "d", "user": "thinserve-desktop"}]}
    assert from_dict(table).local_desktops[0].user == "thinserve-desktop"
    assert from_dict({"local_desktop": [{"name": "d"}]}).local_desktops[0].user is None
    with pytest.raises(ConfigError, match="never runs as root"):
        from_dict({"local_desktop": [{"name": "d", "user": "root"}]})
    with pytest.raises(ConfigError, match="give a Unix user name"):
        from_dict({"local_desktop": [{"name": "d", "user": "two words"}]})


def test_a_missing_desktop_account_names_the_command_that_makes_it() -> None:
    assert MAKE_DESKTOP_ACCOUNT in missing_account(DESKTOP_ACCOUNT)
    assert MAKE_DESKTOP_ACCOUNT.startswith("useradd --system --create-home --home-dir ")
    assert "useradd --create-home alice" in missing_account("alice")


def test_a_local_desktop_as_root_is_refused_with_what_to_do() -> None:
    need(os.geteuid() == 0, "root: only root's own desktop would run as root (CI runs as root)")
    with pytest.raises(BackendError, match=f'set user = "{DESKTOP_ACCOUNT}"') as refused:
        accounts.local_desktop_account("desktop-1", None)
    assert MAKE_DESKTOP_ACCOUNT in str(refused.value)
    with pytest.raises(BackendError, match="would run as root"):
        accounts.local_desktop_account("desktop-1", "root")


# --- the default session's script --------------------------------------------------------------

STUBS = {
    # icewm-session: says how it was started, takes the screen, then lasts
    # until the terminal has started.
    "icewm-session": (
        'echo "icewm-session $* ICEWM_PRIVCFG=${ICEWM_PRIVCFG-unset}" >> "$LOG"\n'
        'touch "$LOG.wm"\n'
        'n=0; while [ ! -e "$LOG.terminal" ] && [ $n -lt 200 ]; do n=$((n+1)); sleep 0.05; done\n'
    ),
    # icesh check: names the window manager once it has taken the screen, as IceWM's does.
    "icesh": '[ -e "$LOG.wm" ] && echo "Name: IceWM (stand-in)"\n',
    "x-terminal-emulator": 'echo "terminal $*" >> "$LOG"; touch "$LOG.terminal"\n',
    "xsetroot": 'echo "xsetroot $*" >> "$LOG"\n',
}


@pytest.fixture
def stubs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH directory of stand-ins; PATH is that directory alone."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        program = bin_dir / name
        program.write_text("#!/bin/sh\n" + body)
        program.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def run_session(tmp_path: Path, bin_dir: Path) -> tuple[list[str], Path, Path]:
    """The default session under /bin/sh: its log lines, the home and the runtime directory."""
    command = default_session.command()
    assert command is not None
    home, runtime, log = tmp_path / "home", tmp_path / "runtime", tmp_path / "log"
    home.mkdir(exist_ok=True)
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "LOG": str(log),
    }
    done = subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines(), home, runtime


def test_the_default_session_starts_icewm_with_its_settings_then_the_terminal(
    tmp_path: Path, stubs: Path
) -> None:
    lines, home, runtime = run_session(tmp_path, stubs)
    settings = runtime / "icewm"
    assert lines == [
        "xsetroot -solid #3a6ea5",
        f"icewm-session --nobg ICEWM_PRIVCFG={settings}",
        "terminal ",
    ]
    menu = (settings / "menu").read_text()
    assert "x-terminal-emulator" in menu and "pcmanfm" in menu
    assert (settings / "toolbar").read_text() == menu
    assert "TaskBarShowCPUStatus=0" in (settings / "prefoverride").read_text()
    assert list(home.iterdir()) == []  # nothing written into the user's home


def test_a_user_with_an_icewm_configuration_keeps_it(tmp_path: Path, stubs: Path) -> None:
    (tmp_path / "home" / ".icewm").mkdir(parents=True)
    lines, _, runtime = run_session(tmp_path, stubs)
    assert lines == ["icewm-session  ICEWM_PRIVCFG=unset", "terminal "]
    assert not (runtime / "icewm").exists()


def test_without_icewm_there_is_no_default_session(stubs: Path) -> None:
    assert default_session.command() is not None
    (stubs / "icewm-session").unlink()
    assert default_session.command() is None
