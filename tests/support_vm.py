"""Helpers for the QEMU and libvirt backend tests: real programs, no mocks.

- ``require``: a missing component fails the test in CI and skips it elsewhere.
- ``tiny_linux``: the tiny demo Linux (host kernel + busybox), built once.
- ``vm_accel``: "kvm" when KVM really boots that Linux here, else "tcg".
- ``StatusLog``: records ``on_status`` calls; awaits a given status.
- ``Console``: a live RFB view of a console through thinserve's RFB client,
  able to type text (US keyboard layout) and wait for the screen to change.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from protocols.rfb.client import ServerInitReceived, UpdateDone
from protocols.rfb.constants import Encoding
from thinserve.backends.base import ConsoleAddress, DesktopStatus
from thinserve.backends.images import READY_MARKER, ImageError, TinyLinux, build_tiny_linux
from thinserve.rfbclient import ClientOptions, RFBClientProtocol, connect

T = TypeVar("T")
ACCEL_ENV = "THINSERVE_QEMU_ACCEL"  # "tcg" or "kvm" (or "kvm:tcg"): skip the KVM probe
KVM_PROBE_SECONDS = 5.0  # a KVM boot of the tiny Linux takes about one second
SHIFTED = '~!@#$%^&*()_+{}|:"<>?'
SHIFT_L, RETURN = 0xFFE1, 0xFF0D


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(ok: bool, message: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless ``ok``; ``message`` says what to install."""
    if ok:
        return
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def as_deferred(coro: Coroutine[Any, Any, T]) -> defer.Deferred[T]:
    """Run an asyncio coroutine (the backends' API) from a Twisted-driven test."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


def sleep(seconds: float) -> defer.Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


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
    linux = _tiny_linux()
    require(isinstance(linux, TinyLinux), f"tiny Linux: {linux}")
    assert isinstance(linux, TinyLinux)
    return linux


def require_qemu() -> None:
    for program in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        require(
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
    forced = os.environ.get(ACCEL_ENV, "")
    if forced:
        return "kvm" if forced.startswith("kvm") else "tcg"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return "tcg"
    os.close(fd)
    return "kvm" if _kvm_boots(tiny_linux()) else "tcg"


def _kvm_boots(linux: TinyLinux) -> bool:
    serial = shared_dir() / "kvm-probe.log"
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-m", "128", "-nodefaults"]
    argv += ["-display", "none", "-serial", f"file:{serial}", "-kernel", str(linux.kernel)]
    argv += ["-initrd", str(linux.initrd), "-append", linux.append]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + KVM_PROBE_SECONDS
        while time.monotonic() < deadline and proc.poll() is None:
            if serial.exists() and READY_MARKER in serial.read_text(errors="replace"):
                return True
            time.sleep(0.2)
        return False
    finally:
        proc.kill()
        proc.wait()


async def wait_for_text(path: Path, text: str, timeout: float) -> str:
    """Wait until the file at ``path`` contains ``text``; return its content."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{text!r} not in {path} after {timeout} s: {content[-300:]!r}")
        await asyncio.sleep(0.1)


@dataclass
class StatusLog:
    """Every (desktop, status, detail) a backend reported, in order."""

    entries: list[tuple[str, DesktopStatus, str]] = field(default_factory=list)

    def __call__(self, desktop: str, status: DesktopStatus, detail: str) -> None:
        self.entries.append((desktop, status, detail))

    def statuses(self, desktop: str) -> list[DesktopStatus]:
        return [status for name, status, _ in self.entries if name == desktop]

    async def wait_for(
        self, desktop: str, status: DesktopStatus, timeout: float, after: int = 0
    ) -> str:
        """Wait for ``status`` among the entries from index ``after``; return its detail."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for name, seen, detail in self.entries[after:]:
                if name == desktop and seen is status:
                    return detail
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{desktop} never became {status}: {self.entries}")
            await asyncio.sleep(0.05)


class Console:
    """A connected RFB client that keeps asking for updates."""

    def __init__(self) -> None:
        self.proto: RFBClientProtocol | None = None
        self.updates = 0
        self.ready: defer.Deferred[None] = defer.Deferred()

    @classmethod
    async def open(cls, address: ConsoleAddress) -> Console:
        console = cls()
        options = ClientOptions(password=address.password)
        console.proto = await connect(address.endpoint, options, console._on_event)
        await console.ready
        return console

    def _on_event(self, proto: RFBClientProtocol, event: object) -> None:
        if isinstance(event, ServerInitReceived):
            proto.conn.set_encodings([Encoding.RAW])
            proto.conn.request_update(incremental=False)
        elif isinstance(event, UpdateDone):
            self.updates += 1
            proto.conn.request_update(incremental=True)
            if not self.ready.called:
                self.ready.callback(None)

    def frame(self) -> np.ndarray:
        assert self.proto is not None
        return self.proto.conn.framebuffer.copy()

    async def wait_until(self, check: Any, timeout: float, what: str) -> np.ndarray:
        """Wait until ``check(frame)`` holds; return that frame."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.frame()
            if check(frame):
                return frame
            if time.monotonic() > deadline:
                raise AssertionError(f"the console never showed {what} within {timeout} s")
            await sleep(0.1)

    async def type_text(self, text: str, enter: bool = True) -> None:
        for char in text:
            shift = char.isupper() or char in SHIFTED
            if shift:
                self._key(True, SHIFT_L)
            self._key(True, ord(char))
            self._key(False, ord(char))
            if shift:
                self._key(False, SHIFT_L)
            await sleep(0.02)
        if enter:
            self._key(True, RETURN)
            self._key(False, RETURN)

    def _key(self, down: bool, keysym: int) -> None:
        assert self.proto is not None
        self.proto.conn.key_event(down, keysym)
        self.proto.flush()

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.loseConnection()


def lit_pixels(frame: np.ndarray) -> int:
    """How many pixels differ from the most common colour (the background)."""
    values, counts = np.unique(frame, return_counts=True)
    return int(frame.size - counts.max()) if len(values) else 0
