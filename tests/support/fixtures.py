"""pytest fixtures that run REAL external programs for the integration tests.

Everything listens on loopback only, on ports and X displays found at run time,
waits for readiness with bounded timeouts, and is stopped (whole process group)
when the test ends, pass or fail.  A missing program fails the test in CI and
skips it elsewhere (see ``need``).  tests/conftest.py loads this module as a
plugin.

Fixtures (factories: call them, as often as needed, to start things):

- ``xvnc(size=(640, 480), password=None, extra_args=())`` -> ``xvnc.XvncServer``
- ``qemu_vm(linux=False, memory_mb=128, extra_args=())`` -> ``qemu.QemuVM``
- ``tigervnc_viewer(server=None, listen_port=None, password=None)`` -> ``viewer.TigerViewer``
- ``tiny_linux`` (session): the kernel + busybox initramfs ``tinylinux.TinyLinux``
- ``qemu_accel`` (session): "kvm:tcg" when KVM really boots Linux here, else "tcg"
- ``postgres_server`` (session): a real PostgreSQL on loopback, ``postgres.PostgresServer``
- ``postgres_url``: the URL of an empty database of its own on that server
- ``nodes(name, database, desktops=None, **options)`` -> ``nodes.Node``: a real ``thinserve serve``
  node process (``nodes.start_node``), stopped when the test ends
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from . import tinylinux
from .need import need
from .nodes import Node, start_node
from .postgres import PostgresServer
from .qemu import QemuVM, choose_accel, start_qemu
from .tinylinux import TinyLinux
from .viewer import TigerViewer, need_viewer, start_viewer
from .vncauth import make_password_file
from .xvnc import XvncServer, need_xvnc, start_xvnc


class Stoppable(Protocol):
    def stop(self) -> None: ...


S = TypeVar("S", bound=Stoppable)


class _Started:
    """Things a factory fixture started, stopped in reverse order at teardown."""

    def __init__(self) -> None:
        self.items: list[Stoppable] = []

    def add(self, item: S) -> S:
        self.items.append(item)
        return item

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for item in reversed(self.items):
            try:
                item.stop()
            except Exception as error:
                errors.append(error)
        self.items.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def xvnc(tmp_path: Path) -> Iterator[Callable[..., XvncServer]]:
    """Factory: start a TigerVNC Xvnc on a free display and loopback port."""
    need_xvnc()
    started = _Started()

    def start(
        size: tuple[int, int] = (640, 480),
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> XvncServer:
        workdir = tmp_path / f"xvnc-{len(started.items)}"
        return started.add(start_xvnc(workdir, size, password, extra_args))

    yield start
    started.stop_all()


@pytest.fixture(scope="session")
def tiny_linux(tmp_path_factory: pytest.TempPathFactory) -> TinyLinux:
    """The host kernel plus a busybox-only initramfs, built once per test session."""
    need(
        tinylinux.find_kernel() is not None,
        "no Linux kernel at /boot/vmlinuz-*; apt-get install -y linux-image-amd64",
    )
    need(
        tinylinux.busybox_ok(),
        "no static /bin/busybox; apt-get install -y busybox-static",
    )
    return tinylinux.build(tmp_path_factory.mktemp("tinylinux"))


@pytest.fixture(scope="session")
def qemu_accel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """QEMU's accelerator for this session: KVM only if it really boots Linux here."""
    need("qemu-system-x86_64", "to run a real virtual machine")
    tiny = request.getfixturevalue("tiny_linux") if tinylinux.available() else None
    return choose_accel(tmp_path_factory.mktemp("kvmprobe"), tiny)


@pytest.fixture
def qemu_vm(
    request: pytest.FixtureRequest, tmp_path: Path, qemu_accel: str
) -> Iterator[Callable[..., QemuVM]]:
    """Factory: start QEMU with its VGA console on VNC (SeaBIOS, or the tiny Linux)."""
    started = _Started()

    def start(linux: bool = False, memory_mb: int = 128, extra_args: Sequence[str] = ()) -> QemuVM:
        tiny = request.getfixturevalue("tiny_linux") if linux else None
        workdir = tmp_path / f"qemu-{len(started.items)}"
        return started.add(start_qemu(workdir, qemu_accel, tiny, memory_mb, extra_args))

    yield start
    started.stop_all()


@pytest.fixture
def tigervnc_viewer(tmp_path: Path) -> Iterator[Callable[..., TigerViewer]]:
    """Factory: vncviewer on its own Xvfb, connecting to a server or listening."""
    need_viewer()
    started = _Started()

    def start(
        server: str | None = None,
        listen_port: int | None = None,
        password: str | None = None,
    ) -> TigerViewer:
        workdir = tmp_path / f"viewer-{len(started.items)}"
        workdir.mkdir(parents=True)
        passwd = make_password_file(workdir, password) if password is not None else None
        return started.add(start_viewer(workdir, server, listen_port, passwd))

    yield start
    started.stop_all()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(
        name: str, database: str, desktops: dict[str, int | str] | None = None, **options: Any
    ) -> Node:
        started.append(start_node(tmp_path, name, database, desktops, **options))
        return started[-1]

    yield start
    for node in reversed(started):
        node.stop()
