"""The desktop tables of the config file: VMs, libvirt, Xvnc sessions, pools.

Each table maps onto a backend's own config dataclass, key for key, so the
backends' validation applies; unknown keys and bad values are ConfigErrors
that name the table.  See docs/desktops.md for every key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends.qemu import QemuDesktopConfig, pool
from .backends.xvnc import XvncDesktopConfig, XvncOptions
from .desktops import DesktopsConfig, PoolPolicy

TABLES = ("desktops", "xvnc", "xvnc_desktop", "qemu_desktop", "libvirt")


class DesktopConfigError(ValueError):
    pass


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


def parse(data: dict[str, Any], source: str) -> DesktopSetup:
    manager = data.get("desktops", {})
    pools = {
        name: build(PoolPolicy, table, f"{source} [desktops.pools.{name}]")
        for name, table in _table(manager, "pools", f"{source} [desktops]").items()
    }
    unpooled = build(PoolPolicy, manager.get("unpooled", {}), f"{source} [desktops.unpooled]")
    rest = {k: v for k, v in manager.items() if k not in ("pools", "unpooled")}
    return DesktopSetup(
        manager=build(
            DesktopsConfig, rest | {"pools": pools, "unpooled": unpooled}, f"{source} [desktops]"
        ),
        xvnc=build(XvncOptions, data.get("xvnc", {}), f"{source} [xvnc]"),
        xvnc_desktops=tuple(
            _with_estimate(XvncDesktopConfig, t, f"{source} [[xvnc_desktop]] #{i + 1}")
            for i, t in enumerate(_list(data, "xvnc_desktop", source))
        ),
        qemu_desktops=tuple(
            item
            for i, t in enumerate(_list(data, "qemu_desktop", source))
            for item in _qemu(t, f"{source} [[qemu_desktop]] #{i + 1}")
        ),
        libvirt=_libvirt(_list(data, "libvirt", source), source),
    )


def _libvirt(tables: list[dict[str, Any]], source: str) -> tuple[Any, ...]:
    if not tables:
        return ()
    try:
        from .backends.libvirt_backend import LibvirtConfig
    except ImportError:
        raise DesktopConfigError(
            f"{source} [[libvirt]]: libvirt-python is not installed; "
            "pip install 'thinserve[libvirt]' (needs Debian's libvirt-dev and pkg-config)"
        ) from None
    return tuple(
        build(LibvirtConfig, t, f"{source} [[libvirt]] #{i + 1}") for i, t in enumerate(tables)
    )


def _qemu(table: dict[str, Any], where: str) -> list[tuple[QemuDesktopConfig, float | None]]:
    table = dict(table)
    count = table.pop("count", None)
    config, estimate = _with_estimate(QemuDesktopConfig, table, where)
    if count is None:
        return [(config, estimate)]
    if not isinstance(count, int) or not 1 <= count <= 1000:
        raise DesktopConfigError(f"{where} count: a whole number from 1 to 1000")
    return [(c, estimate) for c in pool(config, count)]


def _with_estimate(cls: type, table: dict[str, Any], where: str) -> tuple[Any, float | None]:
    table = dict(table)
    estimate = table.pop("boot_estimate", None)
    if estimate is not None and (not isinstance(estimate, int | float) or estimate <= 0):
        raise DesktopConfigError(f"{where} boot_estimate: seconds, more than 0")
    return build(cls, table, where), (float(estimate) if estimate is not None else None)


def build(cls: type, table: Any, where: str) -> Any:
    """``cls(**table)`` with the keys checked and TOML values converted."""
    if not isinstance(table, dict):
        raise DesktopConfigError(f"{where}: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise DesktopConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    values = {key: _convert(value, hints[key]) for key, value in table.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise DesktopConfigError(f"{where}: {exc}") from None


def _convert(value: Any, hint: Any) -> Any:
    options = typing.get_args(hint) or (hint,)
    if Path in options and isinstance(value, str):
        return Path(value)
    if typing.get_origin(hint) is tuple or any(typing.get_origin(o) is tuple for o in options):
        return tuple(value) if isinstance(value, list) else value
    return value


def _table(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = d.get(key, {})
    if not isinstance(value, dict):
        raise DesktopConfigError(f"{where} {key}: must be a table")
    return value


def _list(d: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = d.get(key, [])
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DesktopConfigError(f"{where}: write [[{key}]] tables")
    return value
