"""What a desktop needs before it can start (thinserve/desktops/checks.py)."""

from __future__ import annotations

from pathlib import Path

from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.backends.xvnc import XvncDesktopConfig
from thinserve.desktops.checks import qemu_problem, xvnc_problem


def test_a_qemu_desktop_needs_its_files_and_its_qemu(tmp_path: Path) -> None:
    template = tmp_path / "office.qcow2"
    vm = QemuDesktopConfig("vm", state_dir=tmp_path / "vms", template=template)
    assert qemu_problem(vm) == (
        f"template {template} does not exist: put the file there, "
        "or fix template in [[qemu_desktop]] vm"
    )
    template.mkdir()
    assert qemu_problem(vm).startswith(f"template {template} is not a file:")
    template.rmdir()
    template.write_bytes(b"")
    assert qemu_problem(vm) == ""  # whether it is a usable image is QEMU's to say
    missing = QemuDesktopConfig(
        "vm", state_dir=tmp_path, template=template, qemu_binary="no-such-qemu"
    )
    assert qemu_problem(missing) == (
        "no-such-qemu is not installed: apt-get install qemu-system-x86, "
        "or set qemu_binary in [[qemu_desktop]] vm"
    )
    kernel_only = QemuDesktopConfig("k", state_dir=tmp_path, kernel=tmp_path / "vmlinuz")
    assert qemu_problem(kernel_only).startswith(f"kernel {tmp_path / 'vmlinuz'} does not exist")


def test_an_xvnc_desktop_needs_its_user() -> None:
    assert xvnc_problem(XvncDesktopConfig("mine")) == ""  # thinserve's own user
    problem = xvnc_problem(XvncDesktopConfig("theirs", user="no-such-user-x"))
    assert "there is no Unix user 'no-such-user-x'" in problem
    assert "useradd --create-home no-such-user-x" in problem
    assert problem.endswith("([[xvnc_desktop]] theirs)")
