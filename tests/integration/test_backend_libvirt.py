"""The libvirt backend against libvirt's test driver and a real libvirtd + QEMU.

``test:///default`` is libvirt's in-process test hypervisor: domains defined
there start and stop at once and send real lifecycle events, which is how
the backend's Xen path (``xen:///system``, same API and XML) is exercised
here.  The last two tests start a private libvirtd (when the machine allows
it): one boots the tiny demo Linux as a real QEMU domain through it, the
other places a desktop made from a template on that libvirtd, the emptier
of two hosts (the other a test driver host; tests/integration/
test_backend_libvirt_hosts.py has the rest of multi-host placement).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted

from tests.support.aio import as_deferred
from tests.support.backendvm import require_qemu, shared_dir, tiny_linux, vm_accel, wait_for_text
from tests.support.console import Console, lit_pixels
from tests.support.need import need, need_module
from tests.support.statuslog import StatusLog
from thinserve.backends.base import BackendError, ConsoleAddress
from thinserve.backends.images import READY_MARKER
from thinserve.desktop_state import DesktopState

libvirt = need_module(
    "libvirt", "apt-get install -y libvirt-dev pkg-config && pip install libvirt-python"
)

from thinserve.backends.libvirt_backend import (  # noqa: E402
    LibvirtBackend,
    LibvirtConfig,
    console_address,
)
from thinserve.backends.libvirt_placement import HostConfig  # noqa: E402

pytestmark = pytest.mark.integration

TEST_URI = "test:///default"
BOOT_SECONDS = 90.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def fake_domain_xml(name: str, graphics: str) -> str:
    return f"""<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{graphics}</devices>
</domain>"""


@pytest.fixture
def admin_conn() -> Iterator[libvirt.virConnect]:
    """A connection of our own to the test driver, as an administrator's virsh."""
    conn = libvirt.open(TEST_URI)
    yield conn
    conn.close()


@contextlib.contextmanager
def defined(conn: libvirt.virConnect, xml: str) -> Iterator[libvirt.virDomain]:
    dom = conn.defineXML(xml)
    try:
        yield dom
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            if dom.isActive():
                dom.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            dom.undefine()


@pytest_twisted.ensureDeferred
async def test_lists_starts_and_stops_domains_and_reads_their_consoles(
    admin_conn: libvirt.virConnect,
) -> None:
    by_port, by_socket = unique("port"), unique("socket")
    port_xml = fake_domain_xml(
        by_port,
        "<graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1' passwd='s3cret'/>",
    )
    socket_xml = fake_domain_xml(
        by_socket,
        "<graphics type='vnc'><listen type='socket' socket='/run/thinserve/d.sock'/></graphics>",
    )
    log = StatusLog()
    backend = LibvirtBackend(LibvirtConfig(uri=TEST_URI, domains=(by_port, by_socket)), log)
    with defined(admin_conn, port_xml), defined(admin_conn, socket_xml):
        try:
            listed = await as_deferred(backend.list_desktops())
            assert sorted((d.name, d.backend, d.status) for d in listed) == [
                (by_port, "libvirt", DesktopState.STOPPED),
                (by_socket, "libvirt", DesktopState.STOPPED),
            ]
            address = await as_deferred(backend.ensure_running(by_port))
            assert address == ConsoleAddress("tcp:host=127.0.0.1:port=5901", password="s3cret")
            assert admin_conn.lookupByName(by_port).isActive()
            address = await as_deferred(backend.ensure_running(by_socket))
            assert address == ConsoleAddress("unix:path=/run/thinserve/d.sock")

            await as_deferred(backend.stop(by_port))
            await as_deferred(backend.stop(by_socket, force=True))
            assert not admin_conn.lookupByName(by_port).isActive()
            assert not admin_conn.lookupByName(by_socket).isActive()
            for name in (by_port, by_socket):
                assert log.statuses(name) == [
                    DesktopState.STOPPED,  # as first listed
                    DesktopState.STARTING,
                    DesktopState.RUNNING,
                    DesktopState.STOPPING,
                    DesktopState.STOPPED,
                ]
            with pytest.raises(BackendError, match="not one of the libvirt desktops"):
                await as_deferred(backend.ensure_running("test"))
        finally:
            await as_deferred(backend.close())


@pytest.mark.parametrize("use_events", [True, False], ids=["events", "polling"])
@pytest_twisted.ensureDeferred
async def test_changes_made_elsewhere_are_reported(
    admin_conn: libvirt.virConnect, use_events: bool
) -> None:
    name = unique("outside")
    xml = fake_domain_xml(name, "<graphics type='vnc' port='5905' autoport='no'/>")
    log = StatusLog()
    config = LibvirtConfig(uri=TEST_URI, domains=(name,), use_events=use_events, poll_interval=0.1)
    backend = LibvirtBackend(config, log)
    with defined(admin_conn, xml) as dom:
        try:
            await as_deferred(backend.open())
            dom.create()  # an administrator starts it with virsh
            await as_deferred(log.wait_for(name, DesktopState.RUNNING, 5))
            dom.suspend()
            detail = await as_deferred(log.wait_for(name, DesktopState.STOPPED, 5))
            assert detail == "paused"
            mark = len(log.entries)
            await as_deferred(backend.ensure_running(name))  # resumes the paused domain
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            await as_deferred(log.wait_for(name, DesktopState.RUNNING, 5, after=mark))
            mark = len(log.entries)
            dom.destroy()
            detail = await as_deferred(log.wait_for(name, DesktopState.STOPPED, 5, after=mark))
            assert detail == ("destroyed" if use_events else "")
        finally:
            await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_an_event_that_arrives_after_the_fact_replays_nothing(
    admin_conn: libvirt.virConnect,
) -> None:
    """On a busy machine libvirt's "started" event can arrive after the domain was
    stopped again: it is checked against the domain's state, not taken as news."""
    name = unique("late")
    xml = fake_domain_xml(name, "<graphics type='vnc' port='5906' autoport='no'/>")
    log = StatusLog()
    backend = LibvirtBackend(LibvirtConfig(uri=TEST_URI, domains=(name,)), log)
    with defined(admin_conn, xml) as dom:
        try:
            await as_deferred(backend.list_desktops())
            assert log.statuses(name) == [DesktopState.STOPPED]
            backend._on_event(name, libvirt.VIR_DOMAIN_EVENT_STARTED, 0)  # late: it is off
            await as_deferred(asyncio.gather(*backend._confirming))
            assert log.statuses(name) == [DesktopState.STOPPED]
            dom.create()  # an event the domain's state bears out is still reported
            await as_deferred(log.wait_for(name, DesktopState.RUNNING, 5))
            assert log.statuses(name) == [DesktopState.STOPPED, DesktopState.RUNNING]
        finally:
            await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_an_event_that_overlaps_a_stop_replays_nothing(
    admin_conn: libvirt.virConnect,
) -> None:
    """The domain runs on for a moment after the backend reports "stopping": a
    late "started" event checked in that moment is left to the stop, which
    reports how it ended (as a start does for events that overlap it)."""
    name = unique("overlap")
    xml = fake_domain_xml(name, "<graphics type='vnc' port='5907' autoport='no'/>")
    log = StatusLog()
    backend = LibvirtBackend(LibvirtConfig(uri=TEST_URI, domains=(name,)), log)
    with defined(admin_conn, xml):
        try:
            await as_deferred(backend.list_desktops())
            await as_deferred(backend.ensure_running(name))
            stopping = asyncio.ensure_future(backend.stop(name))
            backend._on_event(name, libvirt.VIR_DOMAIN_EVENT_STARTED, 0)  # late, mid-stop
            await as_deferred(asyncio.gather(stopping, *backend._confirming))
            assert log.statuses(name) == [
                DesktopState.STOPPED,
                DesktopState.STARTING,
                DesktopState.RUNNING,
                DesktopState.STOPPING,
                DesktopState.STOPPED,
            ]
        finally:
            await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_unknown_and_consoleless_domains_are_clear_errors(
    admin_conn: libvirt.virConnect,
) -> None:
    name = unique("headless")
    backend = LibvirtBackend(LibvirtConfig(uri=TEST_URI))
    with defined(admin_conn, fake_domain_xml(name, "")):
        try:
            with pytest.raises(BackendError, match="no domain named 'missing'"):
                await as_deferred(backend.ensure_running("missing"))
            with pytest.raises(BackendError, match="has no VNC console"):
                await as_deferred(backend.ensure_running(name))
        finally:
            await as_deferred(backend.close())


XEN_HVM = """<domain type='xen' id='3'>
  <name>winxp</name>
  <os>
    <type arch='x86_64' machine='xenfv'>hvm</type>
    <loader>/usr/lib/xen/boot/hvmloader</loader>
  </os>
  <devices>
    <emulator>/usr/lib/xen/bin/qemu-system-i386</emulator>
    <graphics type='vnc' port='5903' autoport='yes' listen='0.0.0.0' passwd='xenpw'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
  </devices>
</domain>"""


def graphics_xml(inner: str) -> str:
    return f"<domain type='kvm'><name>d</name><devices>{inner}</devices></domain>"


@pytest.mark.parametrize(
    ("xml", "remote", "expected"),
    [
        (XEN_HVM, None, ConsoleAddress("tcp:host=127.0.0.1:port=5903", password="xenpw")),
        (XEN_HVM, "xenhost", ConsoleAddress("tcp:host=xenhost:port=5903", password="xenpw")),
        (
            graphics_xml("<graphics type='spice' port='5930'/><graphics type='vnc' port='5910'/>"),
            None,
            ConsoleAddress("tcp:host=127.0.0.1:port=5910"),
        ),
        (
            graphics_xml(
                "<graphics type='vnc' port='5911' listen='10.0.0.5'>"
                "<listen type='network' address='192.0.2.7' network='desk'/></graphics>"
            ),
            "kvmhost",
            ConsoleAddress("tcp:host=192.0.2.7:port=5911"),
        ),
        (
            graphics_xml("<graphics type='vnc' port='5912' listen='fd00::7'/>"),
            None,
            ConsoleAddress("tcp:host=fd00\\:\\:7:port=5912"),
        ),
        (
            graphics_xml("<graphics type='vnc' socket='/var/lib/libvirt/qemu/d/vnc.sock'/>"),
            None,
            ConsoleAddress("unix:path=/var/lib/libvirt/qemu/d/vnc.sock"),
        ),
    ],
)
def test_console_address_from_graphics_xml(
    xml: str, remote: str | None, expected: ConsoleAddress
) -> None:
    assert console_address(xml, remote) == expected


@pytest.mark.parametrize(
    ("inner", "remote", "message"),
    [
        ("", None, "has no VNC console"),
        ("<graphics type='spice' port='5930'/>", None, "has no VNC console"),
        ("<graphics type='vnc' port='-1' autoport='yes'/>", None, "no VNC port yet"),
        ("<graphics type='vnc' port='5901' listen='127.0.0.1'/>", "host", "not reachable"),
        ("<graphics type='vnc'><listen type='socket' socket='/s'/></graphics>", "h", "Unix socket"),
    ],
)
def test_console_address_errors(inner: str, remote: str | None, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        console_address(graphics_xml(inner), remote)


def test_console_host_overrides_and_uri_host() -> None:
    xml = graphics_xml("<graphics type='vnc' port='5901' listen='127.0.0.1'/>")
    assert console_address(xml, "far", console_host="localhost") == ConsoleAddress(
        "tcp:host=localhost:port=5901"
    )
    assert LibvirtConfig(uri="qemu+ssh://admin@kvm1.example/system").remote_host == "kvm1.example"
    assert LibvirtConfig(uri="xen:///system").remote_host is None
    with pytest.raises(BackendError, match="unreadable domain XML"):
        console_address("<domain>")


# --- a real libvirtd running QEMU ------------------------------------------------------

LIBVIRTD_CONF = """unix_sock_dir = "{dir}"
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{dir}/libvirtd.log"
"""
INSTALL_LIBVIRTD = (
    "apt-get install -y --no-install-recommends libvirt-daemon-system libvirt-daemon "
    "libvirt-daemon-driver-qemu"
)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture(scope="module")
def libvirtd_uri() -> Iterator[str]:
    """A private libvirtd (root, its sockets in a temporary directory)."""
    need(os.geteuid() == 0, "a system libvirtd needs root; run the tests as root")
    for program in ("libvirtd", "virtlogd"):
        need(shutil.which(program) is not None, f"{program} is missing: {INSTALL_LIBVIRTD}")
    need(_user_exists("libvirt-qemu"), f"no libvirt-qemu user: {INSTALL_LIBVIRTD}")
    require_qemu()
    if _socket_alive(Path("/run/libvirt/libvirt-sock")):
        yield "qemu:///system"  # the machine's own libvirtd: use it, start no second one
        return
    workdir = Path(shared_dir()) / "libvirtd"
    workdir.mkdir(mode=0o700)
    (workdir / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(dir=workdir))
    daemons = []
    if not _socket_alive(Path("/run/libvirt/virtlogd-sock")):
        daemons.append(_spawn(["virtlogd"], workdir / "virtlogd.out"))
    argv = ["libvirtd", "--config", str(workdir / "libvirtd.conf")]
    argv += ["--pid-file", str(workdir / "libvirtd.pid")]
    daemons.append(_spawn(argv, workdir / "libvirtd.out"))
    try:
        _wait_for_socket(workdir / "libvirt-sock", daemons[-1], workdir)
        yield f"qemu:///system?socket={workdir}/libvirt-sock"
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _socket_alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _wait_for_socket(path: Path, daemon: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            log = workdir / "libvirtd.log"
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            need(False, f"libvirtd did not start here ({INSTALL_LIBVIRTD}): {tail}")
        time.sleep(0.1)


def tiny_domain_xml(name: str, kernel: Path, initrd: Path, serial: Path, accel: str) -> str:
    return f"""<domain type='{"kvm" if accel == "kvm" else "qemu"}'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=tty0 rdinit=/init quiet</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <graphics type='vnc'><listen type='socket'/></graphics>
    <video><model type='vga'/></video>
    <controller type='usb' model='piix3-uhci'/>
    <input type='tablet' bus='usb'/>
    <serial type='file'><source path='{serial}'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>"""


@pytest_twisted.ensureDeferred
async def test_real_qemu_domain_through_libvirtd(libvirtd_uri: str) -> None:
    linux = tiny_linux()
    kernel = shared_dir() / "vmlinuz"  # libvirt relabels it: use a copy, not /boot's
    if not kernel.exists():
        shutil.copyfile(linux.kernel, kernel)
    serial = shared_dir() / "libvirt-serial.log"
    serial.touch()
    name = unique("tiny")
    xml = tiny_domain_xml(name, kernel, linux.initrd, serial, vm_accel())
    log = StatusLog()
    config = LibvirtConfig(uri=libvirtd_uri, domains=(name,), shutdown_timeout=30)
    backend = LibvirtBackend(config, log)
    admin = libvirt.open(libvirtd_uri)
    console = None
    try:
        with defined(admin, xml):
            address = await as_deferred(backend.ensure_running(name))
            assert address.endpoint.startswith("unix:path=/") and address.endpoint.endswith(".sock")
            assert log.statuses(name)[-2:] == [DesktopState.STARTING, DesktopState.RUNNING]
            console = await Console.open(address)
            await as_deferred(wait_for_text(serial, READY_MARKER, BOOT_SECONDS))
            await console.wait_for_frame(lambda f: lit_pixels(f) > 500, 30, "the booted guest")

            started, mark = time.monotonic(), len(log.entries)
            await as_deferred(backend.stop(name))  # ACPI power button -> guest powers off
            assert time.monotonic() - started < config.shutdown_timeout
            detail = await as_deferred(log.wait_for(name, DesktopState.STOPPED, 10, after=mark))
            assert detail == "shut down"
    finally:
        if console is not None:
            console.close()
        admin.close()
        await as_deferred(backend.close())


@pytest_twisted.ensureDeferred
async def test_a_template_desktop_is_placed_on_the_real_libvirtd_of_two_hosts(
    libvirtd_uri: str, tmp_path: Path
) -> None:
    """Two hosts: the real libvirtd and a test driver "host" already running three
    domains.  The desktop, defined nowhere, is made from the template on the
    emptier real host and started there as a QEMU domain."""
    linux = tiny_linux()
    kernel = shared_dir() / "vmlinuz"
    if not kernel.exists():
        shutil.copyfile(linux.kernel, kernel)
    serial = shared_dir() / "libvirt-serial.log"
    serial.touch()
    template = tmp_path / "tiny.xml"
    template.write_text(tiny_domain_xml("tiny-template", kernel, linux.initrd, serial, vm_accel()))
    busy = tmp_path / "busy.xml"
    busy.write_text(
        "<node><memory>8388608</memory>"
        + "".join(fake_domain_xml(f"busy-{i}", "") for i in range(3))
        + "</node>"
    )
    name = unique("placed")
    config = LibvirtConfig(
        hosts=(HostConfig(f"test://{busy}"), HostConfig(libvirtd_uri)),
        domains=(name,),
        template=template,
        shutdown_timeout=30,
    )
    backend = LibvirtBackend(config)
    admin = libvirt.open(libvirtd_uri)
    try:
        address = await as_deferred(backend.ensure_running(name))
        assert address.endpoint.startswith("unix:path=/") and address.endpoint.endswith(".sock")
        dom = admin.lookupByName(name)
        assert dom.isActive() and dom.isPersistent()
        await as_deferred(backend.stop(name, force=True))
        assert not dom.isActive()
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            dom = admin.lookupByName(name)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        admin.close()
        await as_deferred(backend.close())
