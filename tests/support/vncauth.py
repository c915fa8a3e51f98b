"""VNC password files, as TigerVNC's Xvnc and vncviewer read them."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_password_file(directory: Path, password: str) -> Path:
    """A VNC password file (the obfuscated 8-byte form) made by `vncpasswd -f`."""
    result = subprocess.run(
        ["vncpasswd", "-f"],
        input=f"{password}\n".encode(),
        capture_output=True,
        check=True,
        timeout=10,
    )
    path = directory / "passwd"
    path.write_bytes(result.stdout)
    path.chmod(0o600)
    return path
