"""The desktop tables of the config file: VMs, libvirt, Xvnc sessions, pools.

Each table maps onto a backend's own config dataclass, key for key, so the
backends' validation applies; unknown keys and bad values are ConfigErrors
that name the table.  See docs/desktops.md for every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .backends.libvirt_placement import HostConfig
from .backends.qemu import QemuDesktopConfig, pool
from .backends.xvnc import XvncDesktopConfig, XvncOptions
from .config_reader import ConfigError, Table
from .desktops import DesktopsConfig

MAX_BOOT_ESTIMATE = 86400  # seconds


@dataclass(frozen=True)
class DesktopSetup:
    manager: DesktopsConfig = field(default_factory=DesktopsConfig)
    xvnc: XvncOptions = field(default_factory=XvncOptions)
    xvnc_desktops: tuple[tuple[XvncDesktopConfig, float | None], ...] = ()
    qemu_desktops: tuple[tuple[QemuDesktopConfig, float | None], ...] = ()
    libvirt: tuple[Any, ...] = ()  # LibvirtConfig (libvirt-python is optional)

    @property
    def names(self) -> list[str]:
        """Desktop names known from the file (libvirt: only listed domains)."""
        names = [c.name for c, _ in self.xvnc_desktops] + [c.name for c, _ in self.qemu_desktops]
        return names + [d for lc in self.libvirt for d in lc.domains]


def read(root: Table) -> DesktopSetup:
    """The desktop tables of the file whose top level is ``root``."""
    return DesktopSetup(
        manager=root.table("desktops").build(DesktopsConfig),
        xvnc=root.table("xvnc").build(XvncOptions),
        xvnc_desktops=tuple(_xvnc(t) for t in root.tables("xvnc_desktop")),
        qemu_desktops=tuple(item for t in root.tables("qemu_desktop") for item in _qemu(t)),
        libvirt=_libvirt(root.tables("libvirt")),
    )


def _xvnc(table: Table) -> tuple[XvncDesktopConfig, float | None]:
    estimate = _boot_estimate(table)
    return table.build(XvncDesktopConfig), estimate


def _qemu(table: Table) -> list[tuple[QemuDesktopConfig, float | None]]:
    """One desktop, or with ``count`` a pool of them sharing one template."""
    count = table.whole("count", None, 1, 1000)
    estimate = _boot_estimate(table)
    config = table.build(QemuDesktopConfig)
    if count is None:
        return [(config, estimate)]
    return [(c, estimate) for c in pool(config, count)]


def _boot_estimate(table: Table) -> float | None:
    """How long the desktop usually takes to start: the progress bar's scale."""
    return table.number("boot_estimate", None, 0.1, MAX_BOOT_ESTIMATE, "seconds")


def _libvirt(tables: list[Table]) -> tuple[Any, ...]:
    if not tables:
        return ()
    try:
        from .backends.libvirt_backend import LibvirtConfig
    except ImportError:
        raise ConfigError(
            f"{tables[0].where}: libvirt-python is not installed; "
            "pip install 'thinserve[libvirt]' (needs Debian's libvirt-dev and pkg-config)"
        ) from None
    return tuple(t.build(LibvirtConfig, {tuple[HostConfig, ...]: _libvirt_hosts}) for t in tables)


def _libvirt_hosts(table: Table, key: str) -> tuple[HostConfig, ...]:
    """A libvirt table's ``hosts = [{ uri = "..." }, ...]`` (or ``[[libvirt.hosts]]``)."""
    value = table.take(key)
    if not isinstance(value, list) or not value or not all(isinstance(h, dict) for h in value):
        raise table.error(
            key, 'write each host as a table, e.g. [{ uri = "qemu+ssh://kvm1/system" }]'
        )
    if "uri" in table.data:
        raise table.error(key, "give either uri (one host) or hosts, not both")
    return tuple(
        Table(host, table.source, f"{table.path}.{key}", f"{table.where} {key} #{i + 1}").build(
            HostConfig
        )
        for i, host in enumerate(value)
    )
