"""Where thinserve keeps its state and sockets, and the options that choose them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from thinserve import admin, cli
from thinserve.config import ConfigError, from_dict, load
from thinserve.paths import default_runtime_dir, default_state_dir
from thinserve.store.sqlite import default_path

DESKTOP = {"desktop": [{"name": "d1", "address": "127.0.0.1:5901"}]}
USER = 1000


def test_the_state_directory_follows_systemd_then_root_then_xdg() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/ts:/var/lib/other"}, 0) == Path(
        "/var/lib/ts"
    )
    assert default_state_dir({}, 0) == Path("/var/lib/thinserve")
    assert default_state_dir({"XDG_DATA_HOME": "/d", "HOME": "/h"}, USER) == Path("/d/thinserve")
    assert default_state_dir({"HOME": "/h"}, USER) == Path("/h/.local/share/thinserve")
    assert default_state_dir({"XDG_DATA_HOME": "rel", "HOME": "/h"}, USER) == Path(
        "/h/.local/share/thinserve"
    )
    assert default_path({"HOME": "/h"}, USER) == Path("/h/.local/share/thinserve/thinserve.db")
    assert default_path({}, 0) == Path("/var/lib/thinserve/thinserve.db")


def test_the_runtime_directory_follows_systemd_then_root_then_xdg_then_tmp() -> None:
    assert default_runtime_dir({"RUNTIME_DIRECTORY": "/run/ts"}, 0) == Path("/run/ts")
    assert default_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/0"}, 0) == Path("/run/thinserve")
    xdg = {"XDG_RUNTIME_DIR": "/run/user/1000"}
    assert default_runtime_dir(xdg, USER, USER) == Path("/run/user/1000/thinserve")
    assert default_runtime_dir({}, USER, USER) == Path("/tmp/thinserve-1000")
    assert admin.runtime_socket_path(xdg, USER) == Path("/run/user/1000/thinserve/admin.sock")


def test_database_and_admin_socket_default_under_the_directories() -> None:
    config = from_dict(
        {**DESKTOP, "server": {"state_dir": "/srv/ts", "runtime_dir": "/run/ts"}}, "f.toml"
    )
    assert config.state_dir == Path("/srv/ts") and config.runtime_dir == Path("/run/ts")
    assert config.database_path == "/srv/ts/thinserve.db"
    assert config.admin_socket_path == Path("/run/ts/admin.sock")
    chosen = from_dict(
        {**DESKTOP, "server": {"state_dir": "/srv/ts", "database": "/db/x.db", "admin_socket": ""}}
    )
    assert chosen.database_path == "/db/x.db" and chosen.admin_socket_path is None
    with pytest.raises(ConfigError, match=r"\[server\] state_dir = 'rel': give an absolute path"):
        from_dict({**DESKTOP, "server": {"state_dir": "rel"}}, "f.toml")


def test_a_state_dir_given_on_the_command_line_holds_the_runtime_directory(
    tmp_path: Path,
) -> None:
    given = tmp_path / "state"
    assert load(None, given).runtime_dir == given / "run"
    file = tmp_path / "ts.toml"
    file.write_text('[server]\nstate_dir = "/srv/ts"\n[[desktop]]\nname = "d"\naddress = "h:1"\n')
    assert load(file, given).state_dir == given
    assert load(file, given).runtime_dir == given / "run"
    assert load(file).state_dir == Path("/srv/ts")
    file.write_text(file.read_text().replace("[server]\n", '[server]\nruntime_dir = "/run/x"\n'))
    assert load(file, given).runtime_dir == Path("/run/x")  # the file names it: it stays


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(argv)


def test_serve_options_make_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = tmp_path / "etc.toml"
    monkeypatch.setattr(cli, "SYSTEM_CONFIG", system)
    assert cli.config_from(parse("serve")).source == "embedded defaults"  # no system file
    system.write_text('[[desktop]]\nname = "sys"\naddress = "h:1"\n')
    assert cli.config_from(parse("serve")).source == str(system)
    assert cli.config_from(parse("serve", "--defaults")).source == "embedded defaults"
    own = tmp_path / "own.toml"
    own.write_text('[[desktop]]\nname = "own"\naddress = "h:1"\n')
    config = cli.config_from(
        parse("serve", "--config", str(own), "--state-dir", "rel", "--stop-desktops")
    )
    state = Path.cwd() / "rel"
    assert config.source == str(own) and config.stop_desktops
    assert (config.state_dir, config.runtime_dir) == (state, state / "run")
    assert config.database == str(state / "thinserve.db")
    assert config.admin_socket == str(state / "run" / "admin.sock")
    defaults = cli.config_from(parse("serve", "--defaults"))
    assert not defaults.stop_desktops
    assert defaults.admin_socket is None  # the default place: its problems are only logged
    assert defaults.admin_socket_path == default_runtime_dir() / "admin.sock"
    assert defaults.database == str(default_state_dir() / "thinserve.db")
    with pytest.raises(SystemExit):
        parse("serve", "--config", str(own), "--defaults")
    with pytest.raises(ConfigError, match="no such file"):
        cli.config_from(parse("serve", "--config", str(tmp_path / "missing.toml")))


def test_admin_commands_find_the_socket_of_a_state_dir(tmp_path: Path) -> None:
    args = parse("terminals", "--state-dir", str(tmp_path))
    assert admin.client_socket_path(state_dir=args.state_dir) == tmp_path / "run/admin.sock"
    done = subprocess.run(
        [sys.executable, "-m", "thinserve.cli", "terminals", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"nothing answers at {tmp_path}/run/admin.sock" in done.stderr


def test_version_and_log_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "thinserve.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    from importlib.metadata import version

    assert done.stdout == f"thinserve {version('thinserve')}\n"
    assert parse("serve").log_format == "auto" and parse("serve").log_level == "info"
    assert parse("--log-format", "json", "serve").log_format == "json"
    assert parse("serve", "--log-format", "journal").log_format == "journal"
    assert parse("--log-level", "debug", "serve").log_level == "debug"
