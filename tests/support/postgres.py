"""A real PostgreSQL server for the tests: Debian's postgresql, its own data directory.

``PostgresServer.start`` runs initdb into a fresh directory and starts the
server on a free loopback port, with its socket in that directory, and stops
it again with ``stop``.  It runs as the ``postgres`` account when the tests
run as root (the server refuses root), as the current user otherwise.
``new_database`` makes an empty database per test and returns its URL, so
tests never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from .need import need
from .ports import LOOPBACK, free_tcp_port

START_TIMEOUT = 60.0  # seconds for pg_ctl to see the server accept connections
RUN_AS = "postgres"


def server_bin() -> Path | None:
    """Debian keeps the server's programs under /usr/lib/postgresql/<version>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def need_postgres() -> Path:
    """The server's bin directory; a missing server fails in CI and skips elsewhere."""
    bin_dir = server_bin()
    need(
        bin_dir is not None,
        "PostgreSQL's server (initdb, pg_ctl): install it with `make deps` "
        "or `apt-get install -y postgresql`",
    )
    assert bin_dir is not None
    return bin_dir


class PostgresServer:
    """One PostgreSQL server on loopback for a test session."""

    def __init__(
        self,
        bin_dir: Path,
        root: Path,
        port: int,
        host: str = LOOPBACK,
        wrap: Sequence[str] = (),
        durable: bool = False,
        clients: str | None = None,
        options: str = "",
    ) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.socket_dir = root
        self.port = port
        self.host = host
        self.wrap = tuple(wrap)
        self.durable = durable
        self.clients = clients
        self.options = options

    @classmethod
    def start(
        cls,
        bin_dir: Path | None = None,
        host: str = LOOPBACK,
        wrap: Sequence[str] = (),
        durable: bool = False,
        port: int | None = None,
        clients: str | None = None,
        options: str = "",
    ) -> PostgresServer:
        """``wrap``: a command prefix the server runs under (``ip netns exec NS``, to
        put it in a network namespace, listening on ``host`` there).  ``durable``:
        PostgreSQL's own defaults (fsync, synchronous commit) rather than the tests'
        fast ones, for benchmarks.  ``clients``: a subnet (CIDR) whose hosts may
        connect too, over TCP, as the loopback may.  ``options``: more server
        options (``-c name=value ...``)."""
        bin_dir = bin_dir or need_postgres()
        root = Path(tempfile.mkdtemp(prefix="thinserve-pg-"))
        server = cls(bin_dir, root, port or free_tcp_port(), host, wrap, durable, clients, options)
        try:
            server._init()
            server._run(
                [
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    str(int(START_TIMEOUT)),
                    "-D",
                    str(server.data),
                    "-l",
                    str(root / "server.log"),
                    "-o",
                    server._options(),
                ]
            )
        except BaseException:
            server._remove()
            raise
        return server

    def _init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, RUN_AS, RUN_AS)
        os.chmod(self.root, 0o700)
        self._run(
            [
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "thinserve",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        if self.clients is not None:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all thinserve {self.clients} trust\n")

    def _options(self) -> str:
        fast = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
        return (
            f"-h {self.host} -p {self.port} -k {self.socket_dir} "
            f"{'' if self.durable else fast}-c max_connections=200 {self.options}"
        )

    def _run(self, argv: Sequence[str]) -> None:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", RUN_AS, "--", *command]
        command = [*self.wrap, *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({done.returncode}): "
                f"{done.stderr.strip() or done.stdout.strip()}\n{tail}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://thinserve@{self.host}:{self.port}/{database}"

    def new_database(self) -> str:
        """An empty database no other test uses; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def halt(self) -> None:
        """Stop the server but keep its data, for ``resume`` (a server restart)."""
        self._run(["pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w"])

    def resume(self) -> None:
        """Start the server again after ``halt``, on the same port."""
        self._run(
            [
                "pg_ctl",
                "start",
                "-w",
                "-t",
                str(int(START_TIMEOUT)),
                "-D",
                str(self.data),
                "-l",
                str(self.root / "server.log"),
                "-o",
                self._options(),
            ]
        )

    def stop(self) -> None:
        try:
            self._run(["pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w"])
        finally:
            self._remove()

    def _remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
