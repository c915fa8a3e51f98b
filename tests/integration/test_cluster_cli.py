"""``thinserve nodes`` as a real process: the nodes of a PostgreSQL site, one
alive and one gone; a SQLite site (one node); a database it cannot reach."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import with_schema
from tests.support.ports import free_tcp_port
from tests.support.waiting import wait_until_blocking
from thinserve.cluster.leases import Leases
from thinserve.cluster.nodes import NodeRegistry

pytestmark = pytest.mark.integration

THINSERVE = str(Path(sys.executable).parent / "thinserve")


def thinserve(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [THINSERVE, *argv], capture_output=True, text=True, timeout=60, check=False
    )


def config(directory: Path, database: str) -> str:
    path = directory / "thinserve.toml"
    path.write_text(
        f'[server]\ndatabase = "{database}"\n[[desktop]]\nname = "d1"\naddress = "127.0.0.1:5901"\n'
    )
    return str(path)


@pytest.fixture
def site(postgres_url: str) -> Iterator[str]:
    """node-a alive (4 terminals, 2 desktops, 1 lease); node-b silent and gone."""
    url = with_schema(postgres_url)
    alive = NodeRegistry(url, "node-a", "10.0.0.1", expiry=60.0)
    gone = NodeRegistry(url, "node-b", "10.0.0.2", expiry=0.5)
    leases = Leases(url, "node-a")
    try:
        alive.join()
        alive.heartbeat(terminals=4, desktops=2)
        assert leases.acquire("desktop", "d1", 60.0)
        gone.join()
        wait_until_blocking(
            lambda: not {n.name: n for n in alive.list_nodes()}["node-b"].alive,
            10.0,
            "node-b to expire",
        )
        yield url
    finally:
        for closing in (alive, gone, leases):
            closing.close()


def test_nodes_lists_the_live_and_the_gone(site: str, tmp_path: Path) -> None:
    done = thinserve("nodes", "--config", config(tmp_path, site))
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert lines[0] == ["NODE", "ADDRESS", "STATE", "HEARTBEAT", "TERMINALS", "DESKTOPS", "LEASES"]
    a, b = lines[1], lines[2]
    assert a[:3] == ["node-a", "10.0.0.1", "alive"] and a[-3:] == ["4", "2", "1"]
    assert b[:3] == ["node-b", "10.0.0.2", "gone"] and b[-3:] == ["0", "0", "0"]
    assert float(b[3]) >= 0.5 and b[4:6] == ["s", "ago"]
    assert len(lines) == 3


def test_forget_drops_a_gone_node_and_never_a_live_one(site: str, tmp_path: Path) -> None:
    path = config(tmp_path, site)
    alive = thinserve("nodes", "forget", "node-a", "--config", path)
    assert alive.returncode == 1
    assert "node node-a is alive" in alive.stderr and "stop it first" in alive.stderr
    unknown = thinserve("nodes", "forget", "node-z", "--config", path)
    assert unknown.returncode == 1 and "no node named node-z" in unknown.stderr

    gone = thinserve("nodes", "forget", "node-b", "--config", path)
    assert gone.returncode == 0, gone.stderr
    assert gone.stdout.strip() == "forgot node node-b"
    listed = json.loads(thinserve("nodes", "--json", "--config", path).stdout)
    assert [n["name"] for n in listed["nodes"]] == ["node-a"]


def test_nodes_as_json(site: str, tmp_path: Path) -> None:
    done = thinserve("nodes", "--json", "--config", config(tmp_path, site))
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["cluster"] is True
    got = {n["name"]: n for n in listed["nodes"]}
    assert set(got) == {"node-a", "node-b"}
    assert (got["node-a"]["state"], got["node-a"]["alive"], got["node-a"]["leases"]) == (
        "alive",
        True,
        1,
    )
    assert (got["node-a"]["terminals"], got["node-a"]["desktops"]) == (4, 2)
    assert (got["node-b"]["state"], got["node-b"]["alive"]) == ("gone", False)
    assert got["node-b"]["age"] >= 0.5 and got["node-b"]["address"] == "10.0.0.2"


def test_a_sqlite_site_is_one_node(tmp_path: Path) -> None:
    path = config(tmp_path, str(tmp_path / "thinserve.db"))
    done = thinserve("nodes", "--config", path)
    assert done.returncode == 0, done.stderr
    assert "this site runs as one node" in done.stdout and "no cluster" in done.stdout
    done = thinserve("nodes", "--json", "--config", path)
    assert json.loads(done.stdout) == {"cluster": False, "nodes": []}
    assert not (tmp_path / "thinserve.db").exists()  # only looked at the setting


def test_a_database_it_cannot_reach_is_named_without_its_password(tmp_path: Path) -> None:
    port = free_tcp_port()
    url = f"postgresql://thinserve:s3cret@127.0.0.1:{port}/site"
    done = thinserve("nodes", "--config", config(tmp_path, url))
    assert done.returncode == 1
    assert f"cannot use the database at 127.0.0.1:{port} (database site)" in done.stderr
    assert "check that PostgreSQL runs there" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_a_database_without_the_tables_says_what_to_do(postgres_url: str, tmp_path: Path) -> None:
    done = thinserve("nodes", "--config", config(tmp_path, postgres_url))
    assert done.returncode == 1
    assert "has no cluster tables" in done.stderr and "thinserve serve" in done.stderr
