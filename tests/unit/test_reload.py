"""What a reload changes, worked out from two configurations (thinserve/reload.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.backends.xvnc import XvncDesktopConfig
from thinserve.broker import BrokerConfig
from thinserve.config import Config, DesktopConfig, LocalDesktopConfig
from thinserve.desktop_config import DesktopSetup
from thinserve.reload import compare, desktop_specs, restart_needed

VM = QemuDesktopConfig("vm", state_dir=Path("/var/lib/vms"), kernel=Path("/boot/vmlinuz"))
SESSION = XvncDesktopConfig("s1")


def config(**changes: Any) -> Config:
    base = Config(
        desktops=(DesktopConfig("a", "127.0.0.1:5901"),),
        local_desktops=(LocalDesktopConfig("here"),),
        setup=DesktopSetup(xvnc_desktops=((SESSION, None),), qemu_desktops=((VM, None),)),
        state_dir=Path("/var/lib/thinserve"),
        runtime_dir=Path("/run/thinserve"),
        source="old.toml",
    )
    return replace(base, **changes)


def test_only_settings_read_at_start_need_a_restart() -> None:
    old = config()
    assert restart_needed(old, old) == []
    new = replace(
        old,
        listen=("tcp:port=5900",),
        discovery_interfaces=("10.0.0.1",),
        tls_cert="/etc/c.pem",
        tls_key="/etc/k.pem",
        broker=BrokerConfig(code_lifetime=900.0),  # applied live
        desktops=(),  # applied live
        source="new.toml",
    )
    assert restart_needed(old, new) == [
        "restart to apply: [server] listen changed",
        "restart to apply: [server] tls_cert changed",
        "restart to apply: [server] tls_key changed",
        "restart to apply: [discovery] interfaces changed",
    ]


def test_desktops_added_removed_replaced_and_reconfigured() -> None:
    old = config()
    new = replace(
        old,
        desktops=(DesktopConfig("a", "127.0.0.1:5902"), DesktopConfig("b", "127.0.0.1:5903")),
        local_desktops=(LocalDesktopConfig("here", geometry="1024x768"),),
        setup=DesktopSetup(qemu_desktops=((replace(VM, memory_mib=4096), None),)),
    )
    changes = compare(desktop_specs(old), desktop_specs(new))
    assert changes.added == ["b"]
    assert changes.removed == ["s1"]
    assert changes.replaced == ["a"]  # a [[desktop]] that moved: its link moves
    assert changes.reconfigured == ["vm"]  # applies at its next start
    assert changes.later == ["here"]  # a running session is not touched
    same = compare(desktop_specs(old), desktop_specs(old), frozenset({"s1"}))
    assert (same.added, same.removed, same.replaced) == ([], [], ["s1"])  # made again


def test_a_desktop_that_changes_table_is_replaced() -> None:
    old = config()
    new = replace(old, desktops=(DesktopConfig("here", "127.0.0.1:5901"),), local_desktops=())
    changes = compare(desktop_specs(old), desktop_specs(new))
    assert changes.replaced == ["here"] and changes.removed == ["a"]
