"""A small blocking QMP (QEMU Machine Protocol) client over a unix socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

MAX_LINE = 1 << 20  # a QMP reply is one JSON line; bound what we read


class QmpError(RuntimeError):
    pass


class QmpClient:
    """Sends commands and returns their results; events are kept in ``events``."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        self.events: list[dict[str, Any]] = []
        self.greeting = self._read()
        if "QMP" not in self.greeting:
            raise QmpError(f"not a QMP greeting: {self.greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self.reader.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise QmpError(f"QMP connection closed or line too long: {line[:200]!r}")
        message = json.loads(line)
        if not isinstance(message, dict):
            raise QmpError(f"QMP sent a non-object: {line[:200]!r}")
        return message

    def execute(self, command: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError(f"QMP {command} failed: {reply['error']}")
            elif "return" in reply:
                return reply["return"]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()
