"""A tiny bootable Linux: the host's kernel and an initramfs holding only busybox.

The initramfs is written directly in the cpio "newc" format (so it can hold the
/dev/console node without privileges).  Its /init mounts proc, sys and devtmpfs and
runs a busybox shell on the VGA console.  Each prompt the shell prints also writes
PROMPT_MARK to the first serial port, so a test can tell when the shell is waiting
for input without reading the screen.
"""

from __future__ import annotations

import gzip
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from .elf import is_static_elf

BUSYBOX = Path("/bin/busybox")
PROMPT_MARK = "TINYLINUX-PROMPT"
KERNEL_APPEND = "console=tty0 rdinit=/init quiet"
CONSOLE_DEVICE = (5, 1)  # major, minor of /dev/console

INIT_SCRIPT = f"""#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export PS1='$(echo {PROMPT_MARK} >/dev/ttyS0)/ # '
exec setsid cttyhack sh
"""

DIRECTORIES = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp")


@dataclass(frozen=True)
class TinyLinux:
    kernel: Path
    initrd: Path
    append: str = KERNEL_APPEND


def find_kernel() -> Path | None:
    """The newest readable /boot/vmlinuz-* (Debian's linux-image-amd64), if any."""
    kernels = [p for p in Path("/boot").glob("vmlinuz-*") if p.is_file()]
    if not kernels:
        return None
    return max(kernels, key=lambda p: [int(n) for n in re.findall(r"\d+", p.name)])


def busybox_ok() -> bool:
    """/bin/busybox is there and statically linked (Debian's busybox-static)."""
    return is_static_elf(BUSYBOX)


def available() -> bool:
    return find_kernel() is not None and busybox_ok()


def build(directory: Path) -> TinyLinux:
    """Write the initramfs into directory and pair it with the host kernel."""
    kernel = find_kernel()
    if kernel is None or not busybox_ok():
        raise FileNotFoundError("need /boot/vmlinuz-* and a static /bin/busybox (busybox-static)")
    directory.mkdir(parents=True, exist_ok=True)
    initrd = directory / "tiny.cpio.gz"
    initrd.write_bytes(gzip.compress(initramfs_bytes(BUSYBOX.read_bytes()), 6, mtime=0))
    return TinyLinux(kernel, initrd)


def initramfs_bytes(busybox: bytes) -> bytes:
    members: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (name, stat.S_IFDIR | 0o755, b"", (0, 0)) for name in DIRECTORIES
    ]
    members.append(("dev/console", stat.S_IFCHR | 0o600, b"", CONSOLE_DEVICE))
    members.append(("bin/busybox", stat.S_IFREG | 0o755, busybox, (0, 0)))
    members.append(("init", stat.S_IFREG | 0o755, INIT_SCRIPT.encode(), (0, 0)))
    body = [_entry(inode, *member) for inode, member in enumerate(members, start=1)]
    return b"".join([*body, _entry(0, "TRAILER!!!", 0, b"", (0, 0))])


def _entry(inode: int, name: str, mode: int, data: bytes, device: tuple[int, int]) -> bytes:
    """One newc member: 110-byte ASCII header, name, data, each padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    links = 2 if stat.S_ISDIR(mode) else 1
    fields = (inode, mode, 0, 0, links, 0, len(data), 0, 0, *device, len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    return _pad(header + encoded) + _pad(data)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
