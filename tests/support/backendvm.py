"""What the QEMU and libvirt backend tests boot: the backends' own tiny Linux
(host kernel + busybox), built once, and the accelerator that really runs it here."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from thinserve.backends.images import READY_MARKER, ImageError, TinyLinux, build_tiny_linux

from .need import need
from .qemu import choose_accel
from .waiting import wait_until

QEMU_PROGRAMS = ("qemu-system-x86_64", "qemu-img", "qemu-io")


@functools.cache
def shared_dir() -> Path:
    """A session directory everyone may read (libvirt's QEMU runs as another user)."""
    path = Path(tempfile.mkdtemp(prefix="thinserve-vm-tests-"))
    path.chmod(0o755)
    atexit.register(shutil.rmtree, path, True)
    return path


@functools.cache
def _tiny_linux() -> TinyLinux | str:
    try:
        return build_tiny_linux(shared_dir())
    except ImageError as exc:
        return str(exc)


def tiny_linux() -> TinyLinux:
    """The backends' tiny Linux, built once per session (see ``need``)."""
    linux = _tiny_linux()
    need(isinstance(linux, TinyLinux), f"tiny Linux: {linux}")
    assert isinstance(linux, TinyLinux)
    return linux


def require_qemu() -> None:
    for program in QEMU_PROGRAMS:
        need(
            shutil.which(program) is not None,
            f"{program} is missing: apt-get install -y qemu-system-x86 qemu-utils",
        )


@functools.cache
def vm_accel() -> str:
    """The accelerator that really boots Linux here: "kvm" or "tcg".

    /dev/kvm can exist and open yet hang every real guest (nested set-ups;
    this happens on the development machines), so boot the tiny Linux under
    KVM once and see whether it reaches its shell.
    """
    accel = choose_accel(shared_dir() / "kvm-probe", tiny_linux(), READY_MARKER)
    return "kvm" if accel.startswith("kvm") else "tcg"


async def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """Wait until the file at ``path`` contains ``text``; return its content."""

    def content() -> str:
        return path.read_text(errors="replace") if path.exists() else ""

    await wait_until(
        lambda: text in content(),
        timeout,
        lambda: f"{text!r} in {path} (so far: {content()[-300:]!r})",
    )
    return content()
