"""need(): a missing real component fails the test in CI and skips it elsewhere."""

from __future__ import annotations

import importlib
import os
import shutil
from typing import Any

import pytest

# Debian package that provides each program the integration tests run.
PACKAGES = {
    "Xvnc": "tigervnc-standalone-server",
    "vncpasswd": "tigervnc-tools",
    "vncconfig": "tigervnc-tools",
    "vncviewer": "tigervnc-viewer",
    "Xvfb": "xvfb",
    "xterm": "xterm",
    "xdotool": "xdotool",
    "xwd": "x11-apps",
    "xwininfo": "x11-utils",
    "xsetroot": "x11-xserver-utils",
    "import": "imagemagick",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "avahi-browse": "avahi-utils",
    "avahi-daemon": "avahi-daemon",
    "remmina": "remmina remmina-plugin-vnc",
    "xclip": "xclip",
}


def in_ci() -> bool:
    """True when the CI environment variable says so (CI=true or 1)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def install_hint(program: str) -> str:
    package = PACKAGES.get(program, program)
    return f"install it with `make deps` or `apt-get install -y {package}`"


def need(requirement: str | bool, why: str) -> None:
    """Make sure a real component is there before a test uses it.

    ``requirement`` is a program name looked up on PATH, or a condition that
    must hold.  For a condition, ``why`` must say what to install.  When the
    component is missing, the test fails in CI (CI=true) and is skipped on a
    developer's machine, with a message naming what to install.
    """
    if isinstance(requirement, str):
        if shutil.which(requirement) is not None:
            return
        message = f"{requirement} is not on PATH (needed {why}); {install_hint(requirement)}"
    else:
        if requirement:
            return
        message = f"missing real component: {why}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)  # only outside CI: there a missing part fails above


def need_module(name: str, install: str) -> Any:
    """Import module ``name`` for a test module; missing, it fails the module in CI
    and skips it elsewhere, saying how to ``install`` it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        message = f"{name} is missing: {install}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message, allow_module_level=True)
