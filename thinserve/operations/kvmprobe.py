"""Does KVM really run a guest here?  A boot sector, booted with ``-accel kvm``.

/dev/kvm can be present and openable yet unusable (nested virtualisation
turned off, a seccomp or device policy, a broken module), so the doctor boots
a guest: 512 bytes that write a marker to the serial port and leave through
QEMU's isa-debug-exit device.  SeaBIOS and the guest take well under a
second under KVM; the run is bounded by a timeout all the same.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

MARKER = b"thinserve-kvm-ok\n"
EXIT_PORT = 0xF4
EXIT_VALUE = 0x10
EXIT_STATUS = (EXIT_VALUE << 1) | 1  # what isa-debug-exit makes QEMU's exit status
TIMEOUT = 30.0  # seconds; the guest needs about one
MAX_OUTPUT = 4096  # bytes of QEMU's output quoted in a message


@dataclass(frozen=True)
class Outcome:
    ran: bool
    detail: str


def boot_sector() -> bytes:
    """16-bit real-mode code at 0x7c00: print MARKER on COM1, write EXIT_VALUE to
    the isa-debug-exit port, then halt (in case there is no such device)."""
    code = bytearray(b"\xba\xf8\x03")  # mov dx, 0x3f8
    for byte in MARKER:
        code += bytes((0xB0, byte, 0xEE))  # mov al, byte; out dx, al
    code += bytes((0xBA, EXIT_PORT, 0x00, 0xB0, EXIT_VALUE, 0xEE))  # mov dx, port; out
    code += b"\xf4\xeb\xfd"  # hlt; jmp back to hlt
    return bytes(code).ljust(510, b"\0") + b"\x55\xaa"


def command(qemu: str, image: Path) -> list[str]:
    return [
        qemu,
        "-accel",
        "kvm",
        "-machine",
        "pc",
        "-cpu",
        "host",
        "-m",
        "16",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-device",
        f"isa-debug-exit,iobase={EXIT_PORT:#x},iosize=0x04",
        "-drive",
        f"file={image},format=raw,if=ide,snapshot=on",
    ]


def run_guest(qemu: str = "qemu-system-x86_64", timeout: float = TIMEOUT) -> Outcome:
    """Boot the test guest with KVM; whether it ran, and what QEMU said if not."""
    with tempfile.TemporaryDirectory(prefix="thinserve-doctor-") as tmp:
        image = Path(tmp) / "boot.img"
        image.write_bytes(boot_sector())
        try:
            done = subprocess.run(
                command(qemu, image),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Outcome(False, f"the test guest did not finish within {timeout:g} s")
        except OSError as exc:
            return Outcome(False, f"cannot run {qemu}: {exc.strerror}")
    said = (done.stderr[-MAX_OUTPUT:] or done.stdout[-MAX_OUTPUT:]).decode(errors="replace")
    if done.returncode == EXIT_STATUS and MARKER in done.stdout:
        return Outcome(True, "a test guest booted with KVM")
    return Outcome(False, f"QEMU exited with {done.returncode}: {' '.join(said.split())[:300]}")
