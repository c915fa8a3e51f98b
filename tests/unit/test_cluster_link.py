"""Node credentials: the secret file, the link's user name, and what the node port accepts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted

from protocols.rfb.handshake import PlainCredentials, VncAuthResponse
from thinserve.blacklist import Blacklist
from thinserve.cluster.link import (
    WRONG_SECRET,
    WRONG_USER,
    NodeCredentials,
    NodeSecret,
    SecretError,
    link_user,
    parse_link_user,
    published_address,
    read_secret,
    write_secret,
)

SECRET = NodeSecret(bytes(range(32)))


def test_a_new_secret_is_32_random_bytes_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "node.secret"
    write_secret(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(read_secret(path).value) == 32
    other = tmp_path / "other.secret"
    write_secret(other)
    assert read_secret(other) != read_secret(path)
    with pytest.raises(FileExistsError):
        write_secret(path)  # never replaced: every node must keep the same one


def secret_file(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "node.secret"
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def test_a_secret_file_holds_hex_text_or_raw_bytes(tmp_path: Path) -> None:
    assert read_secret(secret_file(tmp_path, b"ab" * 32 + b"\n")).value == b"\xab" * 32
    raw = bytes(range(200, 240))
    assert read_secret(secret_file(tmp_path, raw)).value == raw


@pytest.mark.parametrize(
    ("data", "mode", "complaint"),
    [
        (b"ab" * 32, 0o640, "may be read by other users (mode 640): chmod 600"),
        (b"ab" * 32, 0o604, "chmod 600"),
        (b"ab" * 31, 0o600, "holds 31 bytes of secret; at least 32"),
        (b"short", 0o600, "`thinserve nodes secret PATH`"),
        (b"x" * 5000, 0o600, "has 5000 bytes; a secret has at most 4096"),
    ],
)
def test_an_unusable_secret_file_is_refused_with_what_to_do(
    tmp_path: Path, data: bytes, mode: int, complaint: str
) -> None:
    with pytest.raises(SecretError) as refused:
        read_secret(secret_file(tmp_path, data, mode))
    assert complaint in str(refused.value)


def test_a_missing_secret_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(SecretError) as refused:
        read_secret(tmp_path / "none")
    assert "thinserve nodes secret" in str(refused.value)


def test_the_password_is_the_secret_in_hex_and_matches_only_itself() -> None:
    assert SECRET.password == bytes(range(32)).hex()
    assert SECRET.matches(SECRET.password)
    assert not SECRET.matches(SECRET.password[:-1] + "0")
    assert not SECRET.matches("")
    assert not SECRET.matches("é" * 64)
    assert SECRET.password not in repr(SECRET)


def test_a_link_names_its_serving_node_and_the_desktop() -> None:
    assert link_user("node-b", "d1") == "node:node-b/d1"
    assert parse_link_user("node:node-b/d1") == ("node-b", "d1")
    assert parse_link_user("node:node-b/pools/x") == ("node-b", "pools/x")
    for wrong in ("alice", "node:", "node:node-b", "node:node-b/", "node:Node_B/d1", "node:/d1"):
        assert parse_link_user(wrong) is None, wrong


def credentials(blacklist: Blacklist, runs: tuple[str, ...] = ("d1",)) -> NodeCredentials:
    return NodeCredentials(blacklist=blacklist, secret=SECRET, runs=lambda d: d in runs)


def plain(user: str, password: str) -> PlainCredentials:
    return PlainCredentials(user, password)


@pytest_twisted.ensureDeferred
async def test_the_node_port_takes_the_secret_for_a_desktop_it_runs() -> None:
    blacklist = Blacklist(threshold=2, timeout=60)
    check = credentials(blacklist).check
    assert await check("10.0.0.2", plain("node:node-b/d1", SECRET.password)) is None
    for _ in range(3):
        refusal = await check("10.0.0.2", plain("node:node-b/d2", SECRET.password))
        assert refusal is not None and "Desktop not run here" in refusal
    assert blacklist.wait("10.0.0.2") == 0  # a right secret is not a failed guess
    assert await check("10.0.0.2", plain("alice", SECRET.password)) == WRONG_USER
    assert await check("10.0.0.2", VncAuthResponse(b"x" * 16, b"y" * 16)) == WRONG_USER
    assert blacklist.wait("10.0.0.2") > 0


@pytest_twisted.ensureDeferred
async def test_wrong_secrets_count_as_failures_and_block_the_source() -> None:
    blacklist = Blacklist(threshold=2, timeout=60)
    check = credentials(blacklist).check
    assert await check("10.0.0.3", plain("node:node-b/d1", "00" * 32)) == WRONG_SECRET
    assert await check("10.0.0.3", plain("node:node-b/d1", "")) == WRONG_SECRET
    blocked = await check("10.0.0.3", plain("node:node-b/d1", SECRET.password))
    assert blocked is not None and "Too many failed attempts" in blocked
    assert await check("10.0.0.4", plain("node:node-b/d1", SECRET.password)) is None


@pytest_twisted.ensureDeferred
async def test_failures_are_logged_and_audited_with_the_peer_and_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    audited: list[tuple[str, str, str]] = []
    check = NodeCredentials(
        blacklist=Blacklist(),
        secret=SECRET,
        runs=lambda d: True,
        audit=lambda *a: audited.append(a),
    ).check
    await check("10.0.0.5", plain("node:node-b/d1", "bad"))
    assert audited == [("10.0.0.5", "node-link-refused", f"user 'node:node-b/d1': {WRONG_SECRET}")]
    assert "authentication from 10.0.0.5: node-link-refused" in caplog.text


def test_the_published_address_is_node_address_and_the_port() -> None:
    assert published_address("10.1.2.3", "0.0.0.0", 5999) == "10.1.2.3:5999"
    assert published_address("", "10.1.2.4", 5999) == "10.1.2.4:5999"
    assert published_address("fd00::5", "::", 5999) == "[fd00::5]:5999"
    with pytest.raises(ValueError, match="set \\[cluster\\] node_address"):
        published_address("", "0.0.0.0", 5999)
