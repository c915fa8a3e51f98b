"""Configured desktops into the desktop manager: at start, and again at a reload.

Each desktop is added with its check (desktops/checks.py).  An Xvnc desktop
whose check fails at once (its user does not exist) cannot be given to an
XvncBackend, which refuses such a session: it gets an ``Unstartable``
backend that fails with the reason, and a reload once the problem is fixed
gives it a real one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from ..backends.qemu import QemuBackend, QemuDesktopConfig
from ..backends.xvnc import XvncBackend, XvncDesktopConfig, XvncOptions
from ..relay.upstream import DesktopAddress
from .checks import Unstartable, qemu_problem, xvnc_problem
from .manager import DesktopManager

XvncItems = Sequence[tuple[XvncDesktopConfig, float | None]]
QemuItems = Sequence[tuple[QemuDesktopConfig, float | None]]


def static_address(desktop: Any) -> DesktopAddress:
    """The DesktopAddress of a ``[[desktop]]`` (thinserve.config.DesktopConfig)."""
    return DesktopAddress(
        desktop.name,
        desktop.endpoint,
        desktop.password,
        desktop.username,
        desktop.ca_file,
        desktop.encodings,
    )


def add_sessions(
    manager: DesktopManager, items: XvncItems, options: XvncOptions, reactor: Any
) -> None:
    """Manage these Xvnc desktops: one new XvncBackend for those that can start."""
    problems = {config.name: xvnc_problem(config) for config, _ in items}
    good = [config for config, _ in items if not problems[config.name]]
    backend = XvncBackend(good, options=options, reactor=reactor) if good else None
    broken = Unstartable(
        "xvnc",
        {name: f"{why}; then reload thinserve" for name, why in problems.items() if why},
    )
    for config, estimate in items:
        check = partial(xvnc_problem, config)
        if backend is not None and not problems[config.name]:
            manager.add(config.name, backend, boot_estimate=estimate, check=check)
        else:
            manager.add(
                config.name,
                broken,
                boot_estimate=estimate,
                stop_on_release=not config.keep_after_logout,
                check=check,
            )


def add_vms(manager: DesktopManager, backend: QemuBackend | None, items: QemuItems) -> QemuBackend:
    """Manage these QEMU desktops, in ``backend`` (a new one if None); returns it."""
    backend = backend or QemuBackend([])
    for config, estimate in items:
        backend.configure(config)
        manager.add(
            config.name, backend, boot_estimate=estimate, check=partial(qemu_problem, config)
        )
    return backend


def is_unstartable(manager: DesktopManager, name: str) -> bool:
    """Whether ``name`` was added without a backend that can start it."""
    md = manager.desktops.get(name)
    return md is not None and isinstance(md.backend, Unstartable)
