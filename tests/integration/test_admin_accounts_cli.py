"""Dashboard admin accounts and API tokens through the real ``thinserve`` CLI,
talking to a real ``thinserve serve`` process over its admin socket."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import Spawned, spawn
from tests.support.waiting import wait_until_blocking

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "thinserve"
THINSERVE = (
    [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "thinserve.cli"]
)
CONFIG = """
[server]
listen = ["tcp:port=0:interface=127.0.0.1"]
web_listen = []
dashboard_listen = []
[discovery]
enabled = false
[[desktop]]
name = "d1"
address = "127.0.0.1:1"
"""
PASSWORD = "a long enough password"


def run(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*THINSERVE, *args, "--state-dir", str(state)],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Spawned, Path]]:
    """``thinserve serve`` on its own state directory, once its admin socket answers."""
    config = tmp_path / "thinserve.toml"
    config.write_text(CONFIG)
    state = tmp_path / "state"
    argv = [*THINSERVE, "--log-format", "text", "serve", "--config", str(config)]
    proc = spawn([*argv, "--state-dir", str(state)], tmp_path / "serve.log")
    try:
        wait_until_blocking(
            lambda: run(state, "admins", "list").returncode == 0 or None,
            60,
            "thinserve's admin socket to answer",
            proc,
            interval=0.2,
        )
        yield proc, state
    finally:
        proc.stop()


def test_admins_and_tokens_through_the_cli(server: tuple[Spawned, Path]) -> None:
    proc, state = server
    empty = run(state, "admins", "list")
    assert empty.returncode == 0 and "no admin accounts yet" in empty.stdout

    added = run(state, "admins", "add", "ann", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added admin ann"
    listed = run(state, "admins", "list")
    assert listed.returncode == 0
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0][:3] == ["ADMIN", "ROLE", "STATE"] and rows[1][:3] == ["ann", "admin", "enabled"]

    again = run(state, "admins", "add", "ann", "--password-stdin", stdin=PASSWORD + "\n")
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.splitlines()[0] == "thinserve: admin 'ann' exists already"
    short = run(state, "admins", "add", "bob", "--password-stdin", stdin="short\n")
    assert short.returncode == 1 and "10 to 128 characters" in short.stderr
    as_json = json.loads(run(state, "admins", "list", "--json").stdout)
    assert [a["name"] for a in as_json] == ["ann"] and PASSWORD not in json.dumps(as_json)

    made = run(state, "tokens", "add", "ann", "--label", "grafana")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("tst_") and "\n" not in token
    assert "will not be shown again" in made.stderr
    listing = run(state, "tokens", "list")
    assert listing.returncode == 0 and "grafana" in listing.stdout
    assert (
        token not in listing.stdout and token not in run(state, "tokens", "list", "--json").stdout
    )
    database = sqlite3.connect(state / "thinserve.db")
    try:
        stored = [str(row) for row in database.execute("SELECT * FROM api_tokens")]
    finally:
        database.close()
    assert len(stored) == 1 and token not in stored[0]

    token_id = token.split("_")[1]
    assert run(state, "tokens", "remove", token_id).returncode == 0
    assert "no API tokens" in run(state, "tokens", "list").stdout
    audit = json.loads(run(state, "audit", "--json").stdout)
    assert [e["action"] for e in audit][-3:] == ["admin-add", "token-add", "token-remove"]
    assert proc.alive


def test_users_get_a_new_secret_and_are_disabled_and_enabled(server: tuple[Spawned, Path]) -> None:
    _, state = server
    assert run(state, "users", "add", "alice", "--secret-stdin", stdin="1234\n").returncode == 0
    passwd = run(state, "users", "passwd", "alice", "--secret-stdin", stdin="4321\n")
    assert passwd.returncode == 0, passwd.stderr
    assert passwd.stdout.strip() == "user alice has a new PIN or password"
    assert run(state, "users", "disable", "alice").stdout.strip() == "user alice disabled"
    assert run(state, "users", "disable", "alice").stdout.strip() == "user alice disabled already"
    assert run(state, "users", "enable", "alice").stdout.strip() == "user alice enabled"
    missing = run(state, "users", "disable", "bob")
    assert missing.returncode == 1 and "no user 'bob'" in missing.stderr
    audit = json.loads(run(state, "audit", "--json").stdout)
    actions = [e["action"] for e in audit]
    assert actions[-3:] == ["user-secret", "user-disable", "user-enable"]


def test_a_clear_message_when_no_server_runs(tmp_path: Path) -> None:
    done = run(tmp_path / "nothing", "admins", "list")
    assert done.returncode == 1
    assert "nothing answers at" in done.stderr and "thinserve serve" in done.stderr
