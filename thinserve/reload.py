"""What a reload of the configuration changes, worked out before anything is done.

``ThinServe.reload`` applies a new Config to a running server: desktops
added or removed, pool policies, the broker's policy.  Everything else a
Config holds (listeners, TLS files, the database, discovery, ...) is read
once at start; a change there is reported as "restart to apply".  This
module compares two Configs; thinserve.service acts on the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .config import Config

# Config fields a reload applies itself (the rest need a restart).
LIVE_FIELDS = frozenset({"desktops", "local_desktops", "setup", "broker", "source"})
WHERE = {
    "discovery": "[discovery] enabled",
    "discovery_interfaces": "[discovery] interfaces",
}

Spec = tuple[str, Any]  # (table, its config): ("qemu_desktop", (QemuDesktopConfig, estimate))


def restart_needed(old: Config, new: Config) -> list[str]:
    """One line per setting that changed but is only read at start."""
    lines = []
    for item in fields(Config):
        if item.name not in LIVE_FIELDS and getattr(old, item.name) != getattr(new, item.name):
            where = WHERE.get(item.name, f"[server] {item.name}")
            lines.append(f"restart to apply: {where} changed")
    if old.setup.xvnc != new.setup.xvnc:
        lines.append("restart to apply: [xvnc] changed")
    if old.setup.libvirt != new.setup.libvirt:
        lines.append("restart to apply: [[libvirt]] changed")
    return lines


def desktop_specs(config: Config) -> dict[str, Spec]:
    """Every desktop the file names (libvirt domains aside), by name."""
    specs: dict[str, Spec] = {}
    for desktop in config.desktops:
        specs[desktop.name] = ("desktop", desktop)
    for local in config.local_desktops:
        specs[local.name] = ("local_desktop", local)
    for session in config.setup.xvnc_desktops:
        specs[session[0].name] = ("xvnc_desktop", session)
    for vm in config.setup.qemu_desktops:
        specs[vm[0].name] = ("qemu_desktop", vm)
    return specs


@dataclass
class DesktopChanges:
    """What a reload does to the desktops, by name.

    added, removed: as they say.  replaced: removed, then added again (a
    [[desktop]] that moved, a desktop that changed table, one that could not
    be set up before).  reconfigured: QEMU desktops whose new settings apply
    at their next start.  later: Xvnc sessions whose new settings need a
    restart (their running session is not touched).
    """

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)
    later: list[str] = field(default_factory=list)


def compare(
    old: dict[str, Spec], new: dict[str, Spec], unstartable: frozenset[str] = frozenset()
) -> DesktopChanges:
    """How to go from the desktops ``old`` to ``new``; ``unstartable``: desktops
    set up without a backend able to start them, made again when still wanted."""
    changes = DesktopChanges(
        added=[name for name in new if name not in old],
        removed=[name for name in old if name not in new],
    )
    for name in [name for name in new if name in old]:
        (kind, before), (now_kind, after) = old[name], new[name]
        if kind != now_kind or (kind == "desktop" and before != after) or name in unstartable:
            changes.replaced.append(name)
        elif before == after:
            continue
        elif kind == "qemu_desktop":
            changes.reconfigured.append(name)
        else:
            changes.later.append(name)
    return changes
