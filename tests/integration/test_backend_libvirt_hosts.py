"""The libvirt backend over several hypervisor hosts: placement, templates, hosts down.

Xen hosts and remote KVM hosts (``qemu+ssh://...``) cannot run here, so
libvirt's test driver stands in for them: each ``test:///abs/path/host.xml``
is a separate in-process "host" with its own memory and its own domains
(opened from that file, then changed only through the backend's own
connection to it).  Every placement below is decided from what libvirt
itself answers (numOfDomains, getFreeMemory / getInfo), as it would be on
real hosts.  A host that cannot be reached is a test driver file that does
not exist, or a ``qemu+unix`` socket that does not exist.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.support.aio import as_deferred
from tests.support.need import need_module
from tests.support.statuslog import StatusLog
from thinserve.backends.base import BackendError, ConsoleAddress
from thinserve.config_reader import ConfigError, Table
from thinserve.desktop_state import DesktopState

libvirt = need_module(
    "libvirt", "apt-get install -y libvirt-dev pkg-config && pip install libvirt-python"
)

from thinserve import desktop_config  # noqa: E402
from thinserve.backends.libvirt_backend import LibvirtBackend, LibvirtConfig  # noqa: E402
from thinserve.backends.libvirt_placement import HostConfig  # noqa: E402

pytestmark = pytest.mark.integration

NO_SOCKET = "qemu+unix:///system?socket=/nonexistent/thinserve-test/libvirt-sock"
SHUTOFF = 5  # test driver runstate: defined, not running


def domain_xml(name: str, memory_mib: int = 256, runstate: int | None = None) -> str:
    state = f"<test:runstate>{runstate}</test:runstate>" if runstate is not None else ""
    return f"""<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><graphics type='vnc' port='5920' autoport='no' listen='0.0.0.0'/></devices>
  {state}
</domain>"""


def host_file(path: Path, memory_mib: int, running: int = 0, shut_off: Sequence[str] = ()) -> str:
    """A test driver "host": ``running`` busy domains, ``shut_off`` defined ones; its URI."""
    domains = [domain_xml(f"busy-{i}", 512) for i in range(running)]
    domains += [domain_xml(name, 256, SHUTOFF) for name in shut_off]
    path.write_text(
        "<node>\n<cpu><mhz>2000</mhz><model>x86</model><active>4</active><nodes>1</nodes>"
        "<sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>\n"
        f"<memory>{memory_mib * 1024}</memory>\n" + "\n".join(domains) + "\n</node>\n"
    )
    return f"test://{path}"


@pytest.fixture
def template(tmp_path: Path) -> Path:
    """A domain with a fixed uuid: each desktop made from it must still get its own."""
    path = tmp_path / "desktop.xml"
    uuid_line = f"<uuid>{uuid.uuid4()}</uuid>\n  <name>"
    path.write_text(domain_xml("template-name", 512).replace("<name>", uuid_line, 1))
    return path


def active_on(backend: LibvirtBackend, index: int) -> list[str]:
    """The desktops running on host ``index``, asked through the backend's own connection."""
    conn = backend.hosts[index].connection()
    return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))


@pytest_twisted.ensureDeferred
async def test_least_loaded_placement_defines_template_desktops_on_the_chosen_host(
    tmp_path: Path, template: Path
) -> None:
    small = host_file(tmp_path / "small.xml", memory_mib=1536)  # empty, 1.5 GiB free
    big = host_file(tmp_path / "big.xml", memory_mib=8192, running=2)  # 2 running, 7 GiB free
    log = StatusLog()
    config = LibvirtConfig(
        hosts=(HostConfig(small, console_host="192.0.2.2"), HostConfig(big)),
        domains=("desk-1", "desk-2", "desk-3"),
        template=template,
    )
    backend = LibvirtBackend(config, log)
    try:
        listed = await as_deferred(backend.list_desktops())
        assert [(d.name, d.status) for d in listed] == [
            (name, DesktopState.STOPPED) for name in ("desk-1", "desk-2", "desk-3")
        ]
        address = await as_deferred(backend.ensure_running("desk-1"))  # fewer running: small
        assert address == ConsoleAddress("tcp:host=192.0.2.2:port=5920")  # its console_host
        assert active_on(backend, 0) == ["desk-1"]
        await as_deferred(backend.ensure_running("desk-2"))  # small runs 1, big 2: small
        assert active_on(backend, 0) == ["desk-1", "desk-2"]
        # 2 running each: big has more memory free (7 GiB to 0.5), though listed second
        address = await as_deferred(backend.ensure_running("desk-3"))
        assert address == ConsoleAddress("tcp:host=127.0.0.1:port=5920")
        assert active_on(backend, 1) == ["busy-0", "busy-1", "desk-3"]
        assert active_on(backend, 0) == ["desk-1", "desk-2"]

        listed = await as_deferred(backend.list_desktops())
        assert [(d.name, d.status) for d in listed] == [
            (name, DesktopState.RUNNING) for name in ("desk-1", "desk-2", "desk-3")
        ]
        assert log.statuses("desk-3") == [
            DesktopState.STOPPED,
            DesktopState.STARTING,
            DesktopState.RUNNING,
        ]
        conn = backend.hosts[0].connection()  # defined for good, each with its own uuid
        assert conn.lookupByName("desk-1").UUIDString() != conn.lookupByName("desk-2").UUIDString()

        await as_deferred(backend.stop("desk-1"))  # stopped where it runs; still defined there
        assert active_on(backend, 0) == ["desk-2"]
        await as_deferred(backend.reset("desk-2"))
        await as_deferred(backend.ensure_running("desk-1"))
        assert active_on(backend, 0) == ["desk-1"]
        assert "busy-0" not in [d.name for d in await as_deferred(backend.list_desktops())]
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_a_desktop_defined_on_one_host_runs_there_even_if_another_is_emptier(
    tmp_path: Path, template: Path
) -> None:
    a = host_file(tmp_path / "a.xml", 8192, running=3, shut_off=["pinned", "shared"])
    b = host_file(tmp_path / "b.xml", 8192, shut_off=["shared"])  # shared storage: on both
    config = LibvirtConfig(
        hosts=(HostConfig(a), HostConfig(b)), domains=("pinned", "shared"), template=template
    )
    backend = LibvirtBackend(config)
    try:
        await as_deferred(backend.ensure_running("pinned"))
        assert active_on(backend, 0) == ["busy-0", "busy-1", "busy-2", "pinned"]
        assert active_on(backend, 1) == []
        with pytest.raises(libvirt.libvirtError):
            backend.hosts[1].connection().lookupByName("pinned")  # not defined on b
        await as_deferred(backend.ensure_running("shared"))  # defined on both: placed, on b
        assert active_on(backend, 1) == ["shared"]
        await as_deferred(backend.stop("shared", force=True))
        assert active_on(backend, 1) == []
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_max_domains_and_first_placement(tmp_path: Path, template: Path) -> None:
    a = host_file(tmp_path / "a.xml", 8192, shut_off=["old"])
    b = host_file(tmp_path / "b.xml", 8192, running=2)
    config = LibvirtConfig(
        hosts=(HostConfig(a, max_domains=1), HostConfig(b, max_domains=3)),
        domains=("old", "new-1", "new-2", "new-3"),
        template=template,
        placement="first",
    )
    log = StatusLog()
    backend = LibvirtBackend(config, log)
    try:
        await as_deferred(backend.ensure_running("new-1"))  # first: a (0 of 1 running)
        assert active_on(backend, 0) == ["new-1"]
        await as_deferred(backend.ensure_running("new-2"))  # a is full: b (2 of 3)
        assert active_on(backend, 1) == ["busy-0", "busy-1", "new-2"]
        with pytest.raises(BackendError, match="every host is at its max_domains") as full:
            await as_deferred(backend.ensure_running("new-3"))
        assert "runs 1 of 1" in str(full.value) and "runs 3 of 3" in str(full.value)
        assert log.statuses("new-3")[-1] is DesktopState.CRASHED
        with pytest.raises(BackendError, match=r"a\.xml runs 1 of 1"):
            await as_deferred(backend.ensure_running("old"))  # defined on a, which is full
        await as_deferred(backend.stop("new-1"))
        await as_deferred(backend.ensure_running("old"))  # room on a again
        assert active_on(backend, 0) == ["old"]
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_a_host_that_is_down_is_skipped_and_its_desktops_come_back(
    tmp_path: Path, template: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The host's file does not exist at first; once it does, the next poll finds it.
    Then its connection is dropped and its file removed, as when a host goes away."""
    caplog.set_level(logging.INFO, logger="thinserve.backends")
    missing = tmp_path / "a.xml"
    a = f"test://{missing}"
    b = host_file(tmp_path / "b.xml", 8192, shut_off=["on-b"])
    log = StatusLog()
    hosts = (HostConfig(a), HostConfig(b), HostConfig(NO_SOCKET))
    config = LibvirtConfig(hosts=hosts, domains=("on-a", "on-b"), poll_interval=0.2)
    backend = LibvirtBackend(config, log)
    try:
        listed = {d.name: (d.status, d.detail) for d in await as_deferred(backend.list_desktops())}
        assert listed["on-b"] == (DesktopState.STOPPED, "")
        status, detail = listed["on-a"]
        assert status is DesktopState.CRASHED
        assert detail.startswith(f"no host that answers defines it; {a} cannot be reached: ")
        assert f"libvirt host {a}: {a} cannot be reached" in caplog.text
        assert f"libvirt host {NO_SOCKET}: {NO_SOCKET} cannot be reached" in caplog.text
        assert "/nonexistent/thinserve-test/libvirt-sock" in caplog.text

        with pytest.raises(BackendError, match=f"no domain named 'on-a' on any host .*{missing}"):
            await as_deferred(backend.ensure_running("on-a"))
        await as_deferred(backend.ensure_running("on-b"))  # the host that answers works
        assert active_on(backend, 1) == ["on-b"]

        mark = len(log.entries)
        host_file(missing, 4096, shut_off=["on-a"])  # the host is back
        await as_deferred(log.wait_for("on-a", DesktopState.STOPPED, 10, after=mark))
        assert f"libvirt host {a} answers again" in caplog.text
        await as_deferred(backend.ensure_running("on-a"))
        assert active_on(backend, 0) == ["on-a"]

        mark = len(log.entries)
        missing.unlink()  # it goes away: the link drops and it cannot be opened again
        backend.hosts[0].disconnect()
        detail = await as_deferred(log.wait_for("on-a", DesktopState.CRASHED, 10, after=mark))
        assert detail.startswith(f"{a} cannot be reached: ")
        with pytest.raises(BackendError, match=f"on-a was running on {a}, which is down"):
            await as_deferred(backend.ensure_running("on-a"))  # never twice on shared disks
        assert active_on(backend, 1) == ["on-b"]
    finally:
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_a_template_desktop_goes_to_a_host_that_answers(
    tmp_path: Path, template: Path
) -> None:
    b = host_file(tmp_path / "b.xml", 8192, running=3)
    hosts = (HostConfig(NO_SOCKET), HostConfig(b))
    backend = LibvirtBackend(LibvirtConfig(hosts=hosts, domains=("t",), template=template))
    try:
        await as_deferred(backend.ensure_running("t"))  # the emptier host is down
        assert active_on(backend, 1) == ["busy-0", "busy-1", "busy-2", "t"]
    finally:
        await as_deferred(backend.close())
    lone = LibvirtBackend(LibvirtConfig(uri=NO_SOCKET, domains=("t",), template=template))
    try:
        with pytest.raises(BackendError, match=r"no libvirt host can be reached: .*No such file"):
            await as_deferred(lone.ensure_running("t"))
    finally:
        await as_deferred(lone.close())


def read(text: str) -> tuple[Any, ...]:
    import tomllib

    return desktop_config.read(Table(tomllib.loads(text), "f.toml")).libvirt


def test_hosts_from_the_config_file() -> None:
    (config,) = read(
        """
[[libvirt]]
domains = ["desk-1", "desk-2"]
template = "/etc/thinserve/desktop.xml"
placement = "first"
[[libvirt.hosts]]
uri = "qemu+ssh://kvm1.example/system"
max_domains = 8
[[libvirt.hosts]]
uri = "xen+ssh://xen2.example/system"
console_host = "10.0.0.2"
"""
    )
    assert config.connections == (
        HostConfig("qemu+ssh://kvm1.example/system", max_domains=8),
        HostConfig("xen+ssh://xen2.example/system", console_host="10.0.0.2"),
    )
    assert (config.placement, str(config.template)) == ("first", "/etc/thinserve/desktop.xml")
    (single,) = read('[[libvirt]]\nuri = "xen:///system"\nconsole_host = "tunnel"\n')
    assert single.connections == (HostConfig("xen:///system", console_host="tunnel"),)
    assert single.placement == "least-loaded"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'uri = "xen:///system"\nhosts = [{ uri = "qemu:///system" }]',
            "[[libvirt]] #1 hosts: give either uri (one host) or hosts, not both",
        ),
        (
            'console_host = "t"\nhosts = [{ uri = "qemu:///system" }]',
            "console_host goes into each host",
        ),
        ('hosts = [{ url = "qemu:///system" }]', "[[libvirt]] #1 hosts #1: unknown key(s) url"),
        ('hosts = [{ uri = "a:///" }, { uri = "a:///" }]', "host a:/// is listed twice"),
        ('hosts = [{ uri = "a:///", max_domains = 0 }]', "max_domains must be at least 1"),
        ('hosts = ["qemu:///system"]', "write each host as a table"),
        ('placement = "random"', "placement must be one of least-loaded, first"),
        ('template = "/t.xml"', "template needs domains"),
    ],
)
def test_bad_hosts_in_the_config_file(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        read("[[libvirt]]\n" + text + "\n")
    assert str(err.value).startswith("f.toml [[libvirt]] #1")
