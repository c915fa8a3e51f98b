"""``thinserve doctor`` on real problems: a KVM this user cannot use, a PATH
without Xvnc, a port another program holds.  Each is reported with its fix,
and the exit status says whether anything FAILed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.need import need
from tests.support.ports import LOOPBACK, free_tcp_port
from tests.support.procs import spawn
from tests.support.waiting import wait_until_blocking
from thinserve.operations import ports

pytestmark = pytest.mark.integration

THINSERVE = str(Path(sys.executable).parent / "thinserve")
DOCTOR_TIMEOUT = 120.0  # seconds; the KVM test guest takes about one


def write_config(directory: Path, listen: str = "tcp:port=0:interface=127.0.0.1") -> Path:
    """A configuration with one remote desktop (no Xvnc needed), discovery off."""
    path = directory / "thinserve.toml"
    path.write_text(
        f'[server]\nlisten = ["{listen}"]\nweb_listen = []\n'
        "[discovery]\nenabled = false\n"
        '[[desktop]]\nname = "remote"\naddress = "127.0.0.1:5999"\n'
    )
    path.chmod(0o644)
    return path


def doctor(
    *options: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        [*prefix, THINSERVE, "doctor", "--json", *options],
        capture_output=True,
        text=True,
        env=env,
        timeout=DOCTOR_TIMEOUT,
        check=False,
    )
    assert done.stdout, f"doctor printed nothing; stderr: {done.stderr[-2000:]}"
    return done.returncode, json.loads(done.stdout)["checks"]


def named(checks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    found = [c for c in checks if c["name"] == name]
    assert found, f"no {name} check in {checks}"
    return found


def test_a_kvm_this_user_cannot_open_is_reported_with_its_fix() -> None:
    """As an unprivileged user outside the kvm group, /dev/kvm is not
    read-write: a WARN (nothing configured needs KVM), with the adduser fix."""
    need(os.geteuid() == 0, "root, to run the doctor as another user with setpriv")
    need("setpriv", "to run the doctor as an unprivileged user")
    need(Path("/dev/kvm").exists(), "/dev/kvm (KVM) to take away from a user")
    with tempfile.TemporaryDirectory(prefix="thinserve-doctor-") as tmp:
        directory = Path(tmp)
        directory.chmod(0o755)
        config = write_config(directory)
        state = directory / "state"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        as_nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        status, checks = doctor(
            "--config", str(config), "--state-dir", str(state), env=env, prefix=as_nobody
        )
    (kvm,) = named(checks, "KVM")
    assert kvm["status"] == "WARN", kvm
    assert "/dev/kvm is not read-write for nobody" in kvm["message"]
    assert kvm["fix"].startswith("adduser nobody kvm")
    assert status == 0, f"a WARN alone must not fail the doctor: {checks}"


def guest_runs_with_kvm(directory: Path) -> tuple[bool, str]:
    """The test's own check, apart from the doctor's: a boot sector that only
    leaves through isa-debug-exit, under KVM with the CPU model QEMU desktops
    get there (``-cpu host``).  Whether it ran, and what QEMU said."""
    image = directory / "exit.img"
    code = b"\xba\xf4\x00\xb0\x10\xee\xf4\xeb\xfd"  # mov dx, 0xf4; mov al, 0x10; out; hlt
    image.write_bytes(code.ljust(510, b"\0") + b"\x55\xaa")
    args = ["-accel", "kvm", "-cpu", "host", "-m", "16", "-nodefaults", "-display", "none"]
    args += ["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4"]
    args += ["-drive", f"file={image},format=raw,if=ide,snapshot=on"]
    done = subprocess.run(
        ["qemu-system-x86_64", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=DOCTOR_TIMEOUT,
        check=False,
    )
    return done.returncode == (0x10 << 1) | 1, done.stderr.decode(errors="replace")


def test_the_kvm_verdict_follows_whether_a_guest_really_runs(tmp_path: Path) -> None:
    """Where this user can open KVM, the doctor says OK only after a guest ran,
    and WARN with QEMU's own reason where one cannot (some nested hosts
    refuse a CPU register QEMU sets for ``-cpu host``)."""
    need("qemu-system-x86_64", "to boot the doctor's KVM test guest")
    need(os.access("/dev/kvm", os.R_OK | os.W_OK), "read-write /dev/kvm for this user")
    runs, said = guest_runs_with_kvm(tmp_path)
    status, checks = doctor("--config", str(write_config(tmp_path)), "--state-dir", str(tmp_path))
    (kvm,) = named(checks, "KVM")
    if runs:
        assert kvm == {
            "name": "KVM",
            "status": "OK",
            "message": "a test guest booted with KVM",
            "fix": "",
        }
    else:
        assert kvm["status"] == "WARN", (kvm, said)
        assert "/dev/kvm opens but a guest does not run" in kvm["message"]
        assert " ".join(said.split())[:40] in kvm["message"], (kvm, said)  # QEMU's words
        assert "dmesg" in kvm["fix"]
    assert status == 0, checks


def test_a_missing_xvnc_fails_when_a_local_desktop_needs_it(tmp_path: Path) -> None:
    """The embedded defaults have a local desktop: without Xvnc on PATH, FAIL and exit 1."""
    need("Xvnc", "to take it away from PATH")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    status, checks = doctor(
        "--defaults", "--state-dir", str(tmp_path / "state"), "--no-guest", env=env
    )
    (xvnc,) = named(checks, "Xvnc")
    assert xvnc["status"] == "FAIL", xvnc
    assert "Xvnc is not on PATH" in xvnc["message"]
    assert xvnc["fix"] == "apt-get install tigervnc-standalone-server"
    assert status == 1


def test_a_missing_xvnc_is_only_a_warning_without_local_desktops(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    status, checks = doctor(
        "--config", str(write_config(tmp_path)), "--state-dir", str(tmp_path), "--no-guest", env=env
    )
    (xvnc,) = named(checks, "Xvnc")
    assert xvnc["status"] == "WARN", xvnc
    assert status == 0, checks


def test_a_port_held_by_another_program_fails_naming_it(tmp_path: Path) -> None:
    port = free_tcp_port()
    config = write_config(tmp_path, f"tcp:port={port}:interface={LOOPBACK}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, port))
        holder.listen()
        status, checks = doctor("--config", str(config), "--state-dir", str(tmp_path), "--no-guest")
    (check,) = named(checks, f"port {port}")
    assert check["status"] == "FAIL", check
    assert f"(pid {os.getpid()})" in check["message"], check
    assert check["fix"].startswith(f"ss -ltnp 'sport = :{port}'")
    assert status == 1


def test_a_free_port_is_ok(tmp_path: Path) -> None:
    port = free_tcp_port()
    config = write_config(tmp_path, f"tcp:port={port}:interface={LOOPBACK}")
    status, checks = doctor("--config", str(config), "--state-dir", str(tmp_path), "--no-guest")
    (check,) = named(checks, f"port {port}")
    assert check["status"] == "OK", check
    assert status == 0, checks


def test_the_text_output_prints_each_fix_under_its_problem(tmp_path: Path) -> None:
    port = free_tcp_port()
    config = write_config(tmp_path, f"tcp:port={port}:interface={LOOPBACK}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((LOOPBACK, port))
        holder.listen()
        done = subprocess.run(
            [
                THINSERVE,
                "doctor",
                "--config",
                str(config),
                "--state-dir",
                str(tmp_path),
                "--no-guest",
            ],
            capture_output=True,
            text=True,
            timeout=DOCTOR_TIMEOUT,
            check=False,
        )
    lines = done.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL port {port}:"))
    fix = (
        f"ss -ltnp 'sport = :{port}' (stop that program, "
        "or change listen/web_listen/dashboard_listen in [server])"
    )
    assert lines[index + 1] == f"     fix: {fix}"
    assert done.returncode == 1


def test_a_port_held_by_this_thinserve_is_ok(tmp_path: Path) -> None:
    """The server of the same state directory holds the port: that is as it should be."""
    port = free_tcp_port()
    config = write_config(tmp_path, f"tcp:port={port}:interface={LOOPBACK}")
    state = tmp_path / "state"
    server = spawn(
        [THINSERVE, "serve", "--config", str(config), "--state-dir", str(state)],
        tmp_path / "serve.log",
    )
    try:
        wait_until_blocking(
            lambda: ports.in_use(ports.Port(port, LOOPBACK)),
            60,
            f"thinserve to listen on port {port}",
            server,
        )
        status, checks = doctor("--config", str(config), "--state-dir", str(state), "--no-guest")
    finally:
        server.stop()
    (check,) = named(checks, f"port {port}")
    assert check == {
        "name": f"port {port}",
        "status": "OK",
        "message": f"held by this thinserve (pid {server.pid})",
        "fix": "",
    }
    assert status == 0, checks


# -- a site on PostgreSQL ------------------------------------------------------------------
def site_config(directory: Path, database: str, extra: str = "") -> Path:
    path = directory / "site.toml"
    path.write_text(
        f'[server]\nlisten = ["tcp:port=0:interface=127.0.0.1"]\nweb_listen = []\n'
        f"database = {json.dumps(database)}\n[discovery]\nenabled = false\n"
        f'[cluster]\nnode_name = "doc-node"\n{extra}'
    )
    return path


def test_a_site_database_is_checked_schema_node_name_and_secret(
    tmp_path: Path, postgres_url: str
) -> None:
    from thinserve.cluster.nodes import NodeRegistry
    from thinserve.store import open_store

    open_store(postgres_url).close()  # the tables, as a first node makes them
    secret = tmp_path / "node.secret"
    secret.write_text("ab" * 32)
    secret.chmod(0o644)  # readable by others: refused
    config = site_config(tmp_path, postgres_url, f"secret_file = {json.dumps(str(secret))}\n")
    live = NodeRegistry(postgres_url, "doc-node", "10.9.9.9", expiry=60.0)
    live.join()
    try:
        status, checks = doctor("--config", str(config), "--state-dir", str(tmp_path), "--no-guest")
    finally:
        live.leave()
        live.close()
    (database,) = named(checks, "database")
    assert database["status"] == "OK" and "answers" in database["message"]
    (schema,) = named(checks, "schema")
    assert schema["status"] == "OK", schema
    (name,) = named(checks, "node name")
    assert name["status"] == "WARN" and "10.9.9.9" in name["message"], name
    (found,) = named(checks, "node secret")
    assert found["status"] == "FAIL" and "chmod 600" in found["message"], found
    assert status == 1

    secret.chmod(0o600)
    status, checks = doctor("--config", str(config), "--state-dir", str(tmp_path), "--no-guest")
    assert [c["status"] for c in checks if c["name"] in ("node name", "node secret")] == [
        "OK",
        "OK",
    ]


def test_a_site_database_that_does_not_answer_fails_naming_it(tmp_path: Path) -> None:
    port = free_tcp_port()  # nothing listens there
    database = f"postgresql://thinserve:hunter2secret@127.0.0.1:{port}/site"
    config = site_config(tmp_path, database)
    status, checks = doctor("--config", str(config), "--state-dir", str(tmp_path), "--no-guest")
    (found,) = named(checks, "database")
    assert found["status"] == "FAIL" and f"127.0.0.1:{port}" in found["message"], found
    assert "hunter2secret" not in json.dumps(checks)
    assert status == 1
