"""Configured desktops into the desktop manager: at start, and again at a reload.

Desktops thinserve starts outlive it (docs/desktops.md): ``take_over`` hands
each backend the records under the state directory and takes over the
desktops a previous thinserve left running.

Each desktop is added with its check (desktops/checks.py).  An Xvnc desktop
whose check fails at once (its user does not exist) cannot be given to an
XvncBackend, which refuses such a session: it gets an ``Unstartable``
backend that fails with the reason, and a reload once the problem is fixed
gives it a real one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from ..backends.base import Outliving
from ..backends.qemu import QemuBackend, QemuDesktopConfig
from ..backends.records import RecordStore, end_desktop, records_in
from ..backends.xvnc import XvncBackend, XvncDesktopConfig, XvncOptions
from ..relay.upstream import DesktopAddress
from .bridge import bridge
from .checks import Unstartable, qemu_problem, xvnc_problem
from .manager import DesktopManager

log = logging.getLogger(__name__)

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


async def take_over(
    manager: DesktopManager, state_dir: Path, runtime_dir: Path, only: object | None = None
) -> None:
    """Take over what a previous thinserve left running: every backend's, or only
    ``only``'s (a backend a reload made).  At start, a desktop left running
    that the configuration no longer names is ended first."""
    records = records_in(state_dir)
    if only is None:  # a reload stops what it removes itself
        await _end_unconfigured(manager, records)
    backends = {id(md.backend): md.backend for md in manager.desktops.values() if md.backend}
    for backend in backends.values():
        if only is not None and backend is not only:
            continue
        if isinstance(backend, XvncBackend):
            backend.use_runtime_dir(runtime_dir / "sessions")
        if isinstance(backend, Outliving):
            backend.keep_records(records)
            taken = await bridge(backend.adopt())
            if taken:
                log.info("running desktops taken over: %s", ", ".join(taken))


async def _end_unconfigured(manager: DesktopManager, records: RecordStore) -> None:
    """Nobody could be given such a desktop, and it would hold its memory for good."""
    for name in records.names():
        if name in manager.desktops:
            continue
        record = records.load(name)
        if record is not None:
            log.warning("desktop %s was left running but is no longer configured: ending it", name)
            await bridge(end_desktop(record))
        records.remove(name)
