"""The node link, owner side: other nodes watch the desktops this node runs.

A desktop has one console link on the site, held by the node that runs it
(its ``desktop`` lease, cluster/ownership.py).  A terminal at another node
is shown that desktop through a node link: the serving node connects to
this node's ``[cluster] node_listen`` port (cluster/remote.py) and gets a
session on the desktop's mirror, the one decoded copy this node has, with
its terminals' keys, pointer and clipboard forwarded.  A link counts as
wanting the desktop (a stopped one is started, as for a terminal), but it is
no terminal of this node's broker: the serving node's broker decided.

The port speaks RFB with VeNCrypt X509Plain only: TLS with this node's
server certificate (the serving node pins its key, published in the nodes
table), then a Plain user ``node:<serving node>/<desktop>`` and the site's
node secret as the password.  The secret is compared in constant time;
failures go through the same blacklist and connection caps as terminals'
logins, and are logged with the peer and the reason.

The secret is a file of at least 32 random bytes (``thinserve nodes secret
PATH`` writes one as hex text), the same on every node, readable by
thinserve's user only.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from twisted.application import service
from twisted.internet.defer import Deferred, succeed

from protocols.rfb.constants import VeNCryptSubtype
from protocols.rfb.handshake import PlainCredentials

from ..admission import Admission
from ..blacklist import Blacklist
from ..clock import Clock, reactor_clock
from ..credentials import Credentials, Given
from ..relay import screens
from ..relay.drawn import DrawnScreen
from ..relay.encodepool import EncodeWorkers
from ..relay.session import TerminalSession
from ..relay.source import Source
from ..relay.upstream import DEFAULT_SIZE, Mirror
from ..rfbserver import RFBServerFactory, ServerOptions
from .nodes import NAME

log = logging.getLogger(__name__)

USER_PREFIX = "node:"
MIN_SECRET_BYTES = 32
MAX_SECRET_FILE = 4096  # bytes: a secret file is small; a big one is a mistake
WRONG_USER = "Not a node link: give the user node:NODE/DESKTOP."
WRONG_SECRET = "Wrong node secret: every node needs the same [cluster] secret_file."
NOT_HERE = "Desktop not run here"  # the start of a refusal that is not a failed guess


class SecretError(ValueError):
    """The node secret file cannot be used; the message says what to do."""


@dataclass(frozen=True)
class NodeSecret:
    """The site's node secret; the password of a node link is its hex form."""

    value: bytes = field(repr=False)

    @property
    def password(self) -> str:
        return self.value.hex()

    def matches(self, given: str) -> bool:
        """Whether ``given`` is the password, in time that does not depend on where it differs."""
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.password.encode())


def read_secret(path: str | Path) -> NodeSecret:
    """The secret in ``path``: hex text (as ``thinserve nodes secret`` writes) or raw bytes,
    at least 32 bytes, in a file no other user may read."""
    try:
        info = os.stat(path)
        if info.st_size > MAX_SECRET_FILE:
            raise SecretError(
                f"node secret file {path} has {info.st_size} bytes; a secret has at most "
                f"{MAX_SECRET_FILE}: make one with `thinserve nodes secret PATH`"
            )
        data = Path(path).read_bytes()[:MAX_SECRET_FILE]
    except FileNotFoundError:
        raise SecretError(
            f"node secret file {path} does not exist: make one with `thinserve nodes secret "
            f"{path}` on one node and copy it to every node (mode 600)"
        ) from None
    except OSError as exc:
        raise SecretError(f"cannot read the node secret file {path}: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        mode = f"{stat.S_IMODE(info.st_mode):o}"
        raise SecretError(
            f"node secret file {path} may be read by other users (mode {mode}): chmod 600 {path}"
        )
    value = _decoded(data.strip())
    if len(value) < MIN_SECRET_BYTES:
        raise SecretError(
            f"node secret file {path} holds {len(value)} bytes of secret; at least "
            f"{MIN_SECRET_BYTES} are needed: make a new one with `thinserve nodes secret PATH`"
        )
    return NodeSecret(value)


def _decoded(text: bytes) -> bytes:
    """Hex text as its bytes; anything else as it is."""
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return text


def write_secret(path: str | Path) -> None:
    """A new secret of 32 random bytes, as hex text, in a new file of mode 600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(MIN_SECRET_BYTES) + "\n")


def link_user(serving: str, desktop: str) -> str:
    """The Plain user name of node ``serving``'s link to ``desktop``."""
    return f"{USER_PREFIX}{serving}/{desktop}"


def parse_link_user(user: str) -> tuple[str, str] | None:
    """(serving node, desktop) from a link's user name; None if it is not one."""
    if not user.startswith(USER_PREFIX):
        return None
    serving, slash, desktop = user[len(USER_PREFIX) :].partition("/")
    if not slash or not desktop or not NAME.fullmatch(serving):
        return None
    return serving, desktop


@dataclass(frozen=True)
class NodeCredentials(Credentials):
    """What the node port accepts: a node's user name and the site's secret.

    Every check compares the secret first; a wrong one counts as a failure
    of the peer (the blacklist makes guessing slow).  A right secret for a
    desktop this node does not run is refused with that reason, and is not
    counted: the serving node will be told the new owner soon.
    """

    secret: NodeSecret | None = None
    runs: Callable[[str], bool] = lambda desktop: False

    def _verdict(self, host: str, given: Given) -> Deferred[str | None]:
        if not isinstance(given, PlainCredentials) or self.secret is None:
            return succeed(WRONG_USER)
        right = self.secret.matches(given.password)
        parsed = parse_link_user(given.username)
        if not right:
            return succeed(WRONG_SECRET)
        if parsed is None:
            return succeed(WRONG_USER)
        if not self.runs(parsed[1]):
            return succeed(f"{NOT_HERE}: node link for desktop {parsed[1]} refused.")
        return succeed(None)

    def _count(self, refusal: str | None, host: str, given: Given) -> str | None:
        if refusal is None or refusal.startswith(NOT_HERE):
            self.blacklist.succeeded(host)
            if refusal is not None:
                log.warning("node link from %s: %s", host, refusal)
            return refusal
        blocked = self.blacklist.failed(host)
        then = f"; blocked for {blocked} s" if blocked else ""
        user = given.username if isinstance(given, PlainCredentials) else "(none)"
        self._note(host, "node-link-refused", f"user {user[:80]!r}: {refusal}{then}")
        return refusal


@dataclass(frozen=True)
class Link:
    """One node's link to one desktop of this node."""

    serving: str
    desktop: str
    host: str


class NodeLinks(service.Service):
    """The node port's sessions: each one watches a desktop's mirror.

    ``mirrors`` are the desktops this node runs (the desktop manager's);
    ``want`` starts one (the manager's ``want``).  On stop every link closes.
    """

    def __init__(
        self,
        mirrors: Mapping[str, Mirror],
        want: Callable[[str], object],
        workers: EncodeWorkers | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.mirrors = mirrors
        self.want = want
        self.workers = workers
        self.clock = clock or reactor_clock()
        self.links: dict[TerminalSession, Link] = {}
        self.opened = 0  # links opened since the start

    def new_session(self) -> TerminalSession:
        return TerminalSession(self._attach, self._detach, workers=self.workers)

    def _attach(self, session: TerminalSession) -> Source:
        proto = session.proto
        assert proto is not None
        host = proto.peer_host()
        parsed = parse_link_user(proto.login_user or "")
        desktop = parsed[1] if parsed is not None else "?"
        mirror = self.mirrors.get(desktop)
        if parsed is None or mirror is None:  # let go since the credentials were checked
            self.clock.callLater(0, session.close, f"desktop {desktop} is not run here")
            width, height = DEFAULT_SIZE
            reason = "This node does not run it."
            return DrawnScreen(screens.unavailable(desktop, 0, reason), width, height)
        link = Link(parsed[0], desktop, host)
        self.links[session] = link
        self.opened += 1
        session.control = True  # the serving node's broker decided who controls it
        self.want(desktop)
        log.info(
            "node link from node %s (%s) opened for desktop %s: %d node link(s) to it",
            link.serving,
            host,
            desktop,
            self.count(desktop),
        )
        return mirror

    def _detach(self, session: TerminalSession) -> None:
        link = self.links.pop(session, None)
        if link is None:
            return
        log.info(
            "node link from node %s (%s) for desktop %s closed: %s",
            link.serving,
            link.host,
            link.desktop,
            session.ended or "closed",
        )

    def count(self, desktop: str) -> int:
        return sum(1 for link in self.links.values() if link.desktop == desktop)

    def desktops(self) -> dict[str, str]:
        """desktop -> holder for the desktops node links watch (they are in use)."""
        return {link.desktop: f"node:{link.serving}" for link in self.links.values()}

    def drop(self, desktop: str, why: str) -> None:
        """Close the links to ``desktop`` (this node let it go)."""
        for session, link in list(self.links.items()):
            if link.desktop == desktop:
                session.close(why)

    def stopService(self) -> None:
        super().stopService()
        for session in list(self.links):
            session.close("thinserve is stopping")


def link_factory(
    links: NodeLinks,
    secret: NodeSecret,
    cert_file: str,
    key_file: str,
    *,
    blacklist: Blacklist | None = None,
    admission: Admission | None = None,
    audit: Callable[[str, str, str], None] | None = None,
) -> RFBServerFactory:
    """The node port's protocols: X509Plain only, node credentials, the caps."""
    credentials = NodeCredentials(
        blacklist=blacklist or Blacklist(),
        audit=audit,
        secret=secret,
        runs=lambda desktop: desktop in links.mirrors,
    )
    options = ServerOptions(
        methods=(VeNCryptSubtype.X509_PLAIN,),
        cert_file=cert_file,
        key_file=key_file,
        credentials=credentials,
    )
    return RFBServerFactory(options, links.new_session, admission)


def published_address(node_address: str, bound_host: str, port: int) -> str:
    """host:port other nodes connect to: ``node_address`` (or the address the
    port is bound to, when that is one address) and the port's number."""
    host = node_address or bound_host
    if not host or host in ("0.0.0.0", "::"):
        raise ValueError(
            "node_listen listens on every address: set [cluster] node_address to the "
            "address the other nodes reach this one at"
        )
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
