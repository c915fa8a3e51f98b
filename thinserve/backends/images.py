"""Virtual machine images: copy-on-write overlays and a tiny demo Linux.

Overlays: every QEMU desktop runs on its own qcow2 overlay whose backing
file is the read-only template, so many desktops share one template and a
desktop is reset by throwing its overlay away and creating a fresh one.

Tiny Linux: ``build_tiny_initramfs`` packs a static busybox and a small
``/init`` into a gzipped cpio (about 1 MB) that boots with the host's own
kernel.  It prints a marker on the console and on the first serial port,
powers off when the ACPI power button is pressed (so a graceful
``system_powerdown`` can be tested), reports a kernel panic through QEMU's
pvpanic device and runs a shell on the VGA console.
It is the demo and test desktop; the cpio is written directly, so no
``cpio`` program is needed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import lzma
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

READY_MARKER = "thinserve-tiny-vm: ready"
BUSYBOX_CANDIDATES = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
# Kernel modules the tiny VM loads, in this order: the ACPI power button (and
# the event interface it reports through) and QEMU's pvpanic crash signal.
TINY_VM_MODULES = (
    "kernel/drivers/input/evdev.ko",
    "kernel/drivers/acpi/button.ko",
    "kernel/drivers/misc/pvpanic/pvpanic.ko",
    "kernel/drivers/misc/pvpanic/pvpanic-mmio.ko",
)

TINY_INIT = f"""#!/bin/sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in /lib/modules/*.ko; do [ -e "$module" ] && insmod "$module"; done
for input in /sys/class/input/event*; do
    if grep -q "Power Button" "$input/device/name" 2>/dev/null; then
        (head -c 1 "/dev/input/${{input##*/}}" >/dev/null; poweroff -f) &
    fi
done
echo "{READY_MARKER}" > /dev/console
[ -c /dev/ttyS0 ] && echo "{READY_MARKER}" > /dev/ttyS0
exec setsid cttyhack sh
"""


class ImageError(Exception):
    """An image could not be built, inspected or overlaid; the message says why."""


# --- copy-on-write overlays -------------------------------------------------


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip() or f"exit status {proc.returncode}"
        raise ImageError(f"{argv[0]} {argv[1]} failed: {message}")
    return out.decode(errors="replace")


async def image_format(path: Path, qemu_img: str = "qemu-img") -> str:
    """The format ("qcow2", "raw", ...) ``qemu-img`` finds in ``path``."""
    info = json.loads(await _run(qemu_img, "info", "-U", "--output=json", str(path)))
    return str(info["format"])


async def create_overlay(
    template: Path, template_format: str, overlay: Path, qemu_img: str = "qemu-img"
) -> None:
    """Create (or replace) ``overlay`` as a qcow2 copy-on-write layer over ``template``."""
    if not template.is_file():
        raise ImageError(f"template image {template} does not exist")
    overlay.parent.mkdir(parents=True, exist_ok=True)
    fresh = overlay.with_name(overlay.name + ".new")
    fresh.unlink(missing_ok=True)
    await _run(
        qemu_img, "create", "-q", "-f", "qcow2",
        "-F", template_format, "-b", str(template.resolve()), str(fresh),
    )  # fmt: skip
    fresh.replace(overlay)


async def backing_file(overlay: Path, qemu_img: str = "qemu-img") -> str | None:
    """The backing file ``overlay`` names, or None for a standalone image."""
    info = json.loads(await _run(qemu_img, "info", "-U", "--output=json", str(overlay)))
    value = info.get("full-backing-filename") or info.get("backing-filename")
    return str(value) if value else None


# --- the tiny demo Linux ------------------------------------------------------


@dataclass(frozen=True)
class TinyLinux:
    """Everything needed to boot the tiny Linux: kernel, initramfs, command line."""

    kernel: Path
    initrd: Path
    append: str = "console=tty0 rdinit=/init quiet"


def find_kernel(boot: Path = Path("/boot")) -> Path | None:
    """The host's newest readable ``vmlinuz-*`` kernel, or None."""
    kernels = sorted(boot.glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((k for k in kernels if k.is_file()), None)


def kernel_release(kernel: Path) -> str:
    return kernel.name.removeprefix("vmlinuz-")


def find_static_busybox() -> Path | None:
    return next((p for p in BUSYBOX_CANDIDATES if p.is_file() and is_static_elf(p)), None)


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF file with no program interpreter."""
    with path.open("rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:6] != b"\x7fELF\x02\x01":
            return False
        phoff = struct.unpack_from("<Q", header, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    types = (struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum))
    return 3 not in types  # PT_INTERP


def tiny_vm_modules(release: str, root: Path = Path("/lib/modules")) -> list[Path]:
    """The tiny VM's kernel modules for ``release`` that exist (plain or xz)."""
    found = []
    for module in TINY_VM_MODULES:
        for candidate in (root / release / module, root / release / f"{module}.xz"):
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def build_tiny_initramfs(dest: Path, busybox: Path, modules: Iterable[Path] = ()) -> Path:
    """Write the tiny Linux's gzipped cpio to ``dest`` and return it."""
    archive = _CpioWriter()
    for directory in ("bin", "dev", "lib", "lib/modules", "proc", "sys", "tmp"):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    archive.symlink("bin/sh", "busybox")
    archive.file("init", TINY_INIT.encode(), mode=0o755)
    for index, module in enumerate(modules):
        name = module.name.removesuffix(".xz")
        data = module.read_bytes()
        if module.suffix == ".xz":
            data = lzma.decompress(data)
        archive.file(f"lib/modules/{index:02d}-{name}", data)  # init loads them in name order
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(gzip.compress(archive.finish(), compresslevel=9, mtime=0))
    return dest


def build_tiny_linux(directory: Path) -> TinyLinux:
    """Build the tiny Linux from this host's kernel and busybox into ``directory``."""
    kernel = find_kernel()
    if kernel is None:
        raise ImageError("no kernel in /boot: apt-get install linux-image-amd64")
    busybox = find_static_busybox()
    if busybox is None:
        raise ImageError("no static busybox: apt-get install busybox-static")
    modules = tiny_vm_modules(kernel_release(kernel))
    initrd = build_tiny_initramfs(directory / "tiny.cpio.gz", busybox, modules)
    return TinyLinux(kernel=kernel, initrd=initrd)


class _CpioWriter:
    """The "newc" cpio format the kernel unpacks as its initramfs."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        fields = (self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self.inode += 1
        self.parts.append(_pad4(header + name.encode() + b"\0"))
        self.parts.append(_pad4(data))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self.inode = 0
        self._entry("TRAILER!!!", 0)
        return b"".join(self.parts)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
