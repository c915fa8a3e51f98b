"""The config file's tables: what they build, and errors that say where and what to do."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from thinserve.backends.qemu import QemuDesktopConfig
from thinserve.backends.xvnc import XvncDesktopConfig, XvncOptions
from thinserve.broker import BrokerConfigError, RateLimit, from_mapping
from thinserve.config import ConfigError, from_dict, load
from thinserve.desktops import DesktopsConfig, PoolPolicy

DESKTOP = {"desktop": [{"name": "d", "address": "127.0.0.1:5901"}]}

SITE = """
[server]
listen = ["tcp:port=5900"]
name = "lab"

[broker]
unknown_terminal = "pool"
default_pool = "vms"
code_failures_total = [40, 300]

[broker.pools]
vms = ["vm-1", "vm-2"]

[desktops]
tick = 2

[desktops.pools.vms]
max_running = 2
spare = 1

[xvnc]
start_timeout = 30

[[xvnc_desktop]]
name = "office"
depth = 16
extra_args = ["-nolisten", "tcp"]
boot_estimate = 3

[[qemu_desktop]]
name = "vm"
count = 2
state_dir = "/var/lib/thinserve/vms"
kernel = "/boot/vmlinuz"
memory_mib = 512
boot_timeout = 90
"""


def test_a_whole_site_builds_the_backends_own_settings() -> None:
    config = from_dict(tomllib.loads(SITE), "site.toml")
    setup = config.setup
    assert setup.manager == DesktopsConfig(
        pools={"vms": PoolPolicy(max_running=2, spare=1)}, tick=2.0
    )
    assert setup.xvnc == XvncOptions(start_timeout=30.0)
    assert setup.xvnc_desktops == (
        (XvncDesktopConfig("office", depth=16, extra_args=("-nolisten", "tcp")), 3.0),
    )
    vm = QemuDesktopConfig(
        name="vm-1",
        state_dir=Path("/var/lib/thinserve/vms"),
        kernel=Path("/boot/vmlinuz"),
        memory_mib=512,
        boot_timeout=90.0,
    )
    assert [(c.name, estimate) for c, estimate in setup.qemu_desktops] == [
        ("vm-1", None),
        ("vm-2", None),
    ]
    assert setup.qemu_desktops[0][0] == vm
    assert config.broker.pools == {"vms": ("vm-1", "vm-2")}
    assert config.broker.code_failures_total == RateLimit(40, 300.0)
    assert (config.name, config.listen, config.local_desktops) == ("lab", ("tcp:port=5900",), ())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        # Unknown keys, at every level, with what is allowed.
        (
            {"sever": {}, **DESKTOP},
            "f.toml: unknown key(s) sever; allowed: broker, cluster, desktop, desktops, discovery, "
            "libvirt, local_desktop, qemu_desktop, server, xvnc, xvnc_desktop",
        ),
        (
            {"discovery": {"enable": False}, **DESKTOP},
            "f.toml [discovery]: unknown key(s) enable; allowed: enabled, interfaces",
        ),
        (
            {"desktops": {"pools": {"vms": {"max": 1}}}, **DESKTOP},
            "f.toml [desktops.pools.vms]: unknown key(s) max; "
            "allowed: idle_stop_after, max_running, reset_on_release, spare",
        ),
        (
            {"xvnc_desktop": [{"name": "a"}, {"name": "b", "colour": "red"}]},
            "f.toml [[xvnc_desktop]] #2: unknown key(s) colour; allowed: boot_estimate, "
            "command, depth, extra_args, geometry, keep_after_logout, name, user, xvnc_as_user",
        ),
        # Types, named by the key.
        (
            {"qemu_desktop": [{"name": "v", "state_dir": "/v", "kernel": "/k", "cpus": "2"}]},
            "f.toml [[qemu_desktop]] #1 cpus: give a whole number",
        ),
        (
            {"xvnc": {"start_timeout": "soon"}, **DESKTOP},
            "f.toml [xvnc] start_timeout: give a number",
        ),
        (
            {"xvnc_desktop": [{"name": "a", "keep_after_logout": "no"}]},
            "f.toml [[xvnc_desktop]] #1 keep_after_logout: give true or false",
        ),
        (
            {"xvnc_desktop": [{"name": "a", "extra_args": "-nolisten tcp"}]},
            'f.toml [[xvnc_desktop]] #1 extra_args: give a list of strings, e.g. ["a", "b"]',
        ),
        (
            {"qemu_desktop": [{"name": "v", "state_dir": 7, "kernel": "/k"}]},
            'f.toml [[qemu_desktop]] #1 state_dir: give a path, e.g. "/var/lib/thinserve"',
        ),
        (
            {"desktops": {"unpooled": 1}, **DESKTOP},
            "f.toml [desktops] unpooled: write it as a table, [desktops.unpooled]",
        ),
        (
            {"desktop": {"name": "d", "address": "127.0.0.1:5901"}},
            "f.toml desktop: write each as a [[desktop]] table",
        ),
        # Ranges quote the value.
        (
            {"qemu_desktop": [{"name": "v", "state_dir": "/v", "kernel": "/k", "count": 0}]},
            "f.toml [[qemu_desktop]] #1 count = 0: a whole number from 1 to 1000",
        ),
        (
            {"xvnc_desktop": [{"name": "a", "boot_estimate": -1}]},
            "f.toml [[xvnc_desktop]] #1 boot_estimate = -1: seconds from 0.1 to 86400",
        ),
        (
            {"server": {"blacklist_timeout": 0}, **DESKTOP},
            "f.toml [server] blacklist_timeout = 0: a number from 1 to 86400",
        ),
        # Missing keys, and the backends' own checks after the table's name.
        (
            {"qemu_desktop": [{"name": "v"}]},
            "f.toml [[qemu_desktop]] #1: missing key(s) state_dir; add them",
        ),
        (
            {"desktop": [{"address": "127.0.0.1:5901"}]},
            "f.toml [[desktop]] #1: missing key(s) name; add them",
        ),
        (
            {"desktop": [{"name": "", "address": "127.0.0.1:5901"}]},
            "f.toml [[desktop]] #1 name: give a non-empty string",
        ),
        (
            {"xvnc_desktop": [{"name": "a", "depth": 12}]},
            "f.toml [[xvnc_desktop]] #1: desktop a: depth must be one of (16, 24, 32)",
        ),
        (
            {"desktops": {"pools": {"vms": {"max_running": 0}}}, **DESKTOP},
            "f.toml [desktops.pools.vms]: max_running: at least 1 (or leave it out for no limit)",
        ),
        # The broker's table.
        (
            {"broker": {"pools": {"lab": "vm-1"}}, **DESKTOP},
            'f.toml [broker.pools] lab: give a list of strings, e.g. ["a", "b"]',
        ),
        (
            {"broker": {"code_failures_total": [30]}, **DESKTOP},
            "f.toml [broker] code_failures_total: write [failures, window_seconds], e.g. [5, 60]",
        ),
        (
            {"broker": {"code_lifetime": 30}, **DESKTOP},
            "f.toml [broker]: code_lifetime: between 60 and 86400 seconds",
        ),
    ],
)
def test_errors_name_the_file_table_and_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_dict(data, "f.toml")
    assert str(raised.value) == message


def test_a_misspelt_key_is_reported_before_the_key_it_stands_for_is_missed() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) stat_dir; allowed: .*state_dir"):
        from_dict({"qemu_desktop": [{"name": "v", "stat_dir": "/v"}]}, "f.toml")


def test_a_mistyped_secret_is_not_repeated_in_the_message() -> None:
    with pytest.raises(ConfigError) as raised:
        from_dict({"server": {"password": 271828}, **DESKTOP}, "f.toml")
    assert str(raised.value) == "f.toml [server] password: give a string"


def test_the_broker_table_alone_and_its_error_type() -> None:
    assert BrokerConfigError is ConfigError
    config = from_mapping({"hot_desk": True, "unknown_terminal": "login", "code_lifetime": 120})
    assert (config.hot_desk, config.unknown_terminal, config.code_lifetime) == (True, "login", 120)
    with pytest.raises(ConfigError) as raised:
        from_mapping({"code_length": 5.5})
    assert str(raised.value) == "[broker] code_length: give a whole number"


def test_files_that_cannot_be_read_say_so(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    with pytest.raises(ConfigError) as raised:
        load(missing)
    assert str(raised.value) == f"{missing}: no such file; see docs/configuration.md"
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    with pytest.raises(ConfigError, match=rf"^{broken}: not valid TOML: "):
        load(broken)
    good = tmp_path / "good.toml"
    good.write_text('[[local_desktop]]\nname = "x"\ngeometry = "1024x768"\n')
    config = load(good)
    assert (config.source, config.local_desktops[0].geometry) == (str(good), "1024x768")
