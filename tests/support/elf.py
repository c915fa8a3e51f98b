"""Tell a statically linked ELF executable (usable alone in an initramfs) from a dynamic one."""

from __future__ import annotations

import struct
from pathlib import Path

PT_INTERP = 3
ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")


def is_static_elf(path: Path) -> bool:
    """True for a 64-bit little-endian ELF file without a program interpreter."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < ELF64_HEADER.size or data[:6] != b"\x7fELF\x02\x01":
        return False
    fields = ELF64_HEADER.unpack_from(data)
    phoff, phentsize, phnum = fields[5], fields[9], fields[10]
    if phoff + phentsize * phnum > len(data):
        return False
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return PT_INTERP not in types
