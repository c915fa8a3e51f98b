"""Hot-desk logins from TigerVNC's own viewer: X509Plain against thinserve.

A real ``vncviewer`` on a private Xvfb screen connects to thinserve's
terminal port with VeNCrypt X509Plain: TLS with thinserve's certificate
(checked against ``-X509CA``), then a user name and password, which the
viewer takes from ``VNC_USERNAME`` and ``VNC_PASSWORD`` (TigerVNC 1.11 and
later; see "man vncviewer").  The password is checked while the connection
is made: the viewer that gets through shows the user's desktop, and a wrong
password is refused with thinserve's reason before any picture.  vncviewer
exits with status 0 even when it gives up (TigerVNC 1.12), so the reason is
read from what it writes to stderr.

thinserve's certificate here is one made for 127.0.0.1 (``[server]
tls_cert``/``tls_key``), the address the viewer connects to: TigerVNC checks
that the certificate names the host it was told, and asks in a dialog when
it does not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, threads
from Xlib import XK, X
from Xlib.error import XError
from Xlib.ext import xtest

from protocols.rfb.constants import VeNCryptSubtype
from tests.integration.test_relay import desktop
from tests.integration.test_rfb_interop import office_frame
from tests.support.need import need
from tests.support.pixels import diff_summary
from tests.support.procs import spawn
from tests.support.terminal import Terminal
from tests.support.viewer import VIEWER_OPTIONS, TigerViewer, start_xvfb
from tests.support.waiting import wait_until, wait_until_blocking
from tests.support.xscreen import open_display
from tests.support.xvnc import XvncServer
from thinserve import rfbclient
from thinserve.broker import BrokerConfig
from thinserve.broker.ratelimit import RateLimit
from thinserve.config import Config
from thinserve.service import ThinServe
from thinserve.store.base import AuditEntry
from thinserve.tls import make_self_signed

pytestmark = pytest.mark.integration

USER, PASSWORD = "alice", "correct horse 4711"
WRONG = "Wrong user name or password."
TOO_MANY = "Too many failed attempts. Try again in"
SIZE = (640, 480)

Box = tuple[int, int, int, int]


# -- the site: a user with their own desktop, thinserve with hot-desking on -----------------
@dataclass
class Site:
    ts: ThinServe
    desk: XvncServer
    picture: np.ndarray  # the desktop's own framebuffer, as its X server holds it

    @property
    def port(self) -> int:
        return self.ts.port_numbers[0]

    @property
    def ca(self) -> str:
        """thinserve's server certificate: what a viewer is told to trust."""
        assert self.ts.certificate is not None
        return self.ts.certificate.cert_file

    def audit(self, prefix: str = "") -> list[AuditEntry]:
        assert self.ts.store is not None
        return [e for e in self.ts.store.list_audit() if e.action.startswith(prefix)]

    def logins(self) -> list[tuple[str, str, str]]:
        """Every login attempt in the audit log: action, actor, subject."""
        return [(e.action, e.actor, e.subject) for e in self.audit("login")]

    def never_attached(self) -> None:
        """No connection got past the handshake: none ever became a terminal
        (each keyless one is a new terminal, audited as such), so thinserve
        sent no picture to any."""
        assert self.ts.hub is not None
        assert self.ts.hub.terminals == {}
        assert self.audit("terminal-new") == []
        assert self.ts.hub.broker.snapshot().checking == {}


def common_name(cert_file: str) -> str:
    (certificate,) = x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    (name,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name.value)


async def start_site(
    xvnc: Callable[..., XvncServer], tmp_path: Path, broker: BrokerConfig | None = None
) -> Site:
    desk = xvnc(size=SIZE)
    desk.paint(office_frame(*SIZE))
    picture = await threads.deferToThread(desk.grab)
    # The certificate thinserve makes for itself: it names this host's
    # addresses, so TigerVNC connecting to 127.0.0.1 finds no name mismatch.
    config = Config(
        listen=("tcp:port=0:interface=127.0.0.1",),
        web_listen=(),
        broker=broker or BrokerConfig(unknown_terminal="login", hot_desk=True),
        database=":memory:",
        admin_socket="",
        discovery=False,
        desktops=(desktop("d1", desk),),
        local_desktops=(),
        source="test",
    )
    ts = ThinServe(config, reactor)
    await ts.startService()
    assert ts.hub is not None
    ts.hub.broker.add_user(USER, PASSWORD, actor="admin:test", desktop="d1")
    return Site(ts, desk, picture)


# -- vncviewer with X509Plain, its credentials from the environment --------------------------
@dataclass
class LoginViewer:
    viewer: TigerViewer
    seen: list[tuple[str, Box]] = field(default_factory=list)  # windows it mapped

    @property
    def log(self) -> str:
        """What vncviewer wrote (its stderr), lines unwrapped: it wraps long messages."""
        return " ".join(self.viewer.viewer.log_path.read_text(errors="replace").split())

    def windows(self) -> list[tuple[str, Box]]:
        """The viewer's mapped top-level windows (title, box); noted in ``seen``."""
        found = mapped_windows(self.viewer.display_name)
        self.seen += [w for w in found if w not in self.seen]
        return found

    def wait_exit(self, timeout: float = 30.0) -> None:
        """Wait until vncviewer ends by itself, noting every window it maps."""

        def ended() -> bool:
            self.windows()
            return not self.viewer.viewer.alive()

        wait_until_blocking(ended, timeout, "vncviewer to give up", interval=0.05)

    def wait_window(self, title: str, timeout: float = 30.0) -> int:
        """The id of the viewer's mapped window called ``title``, once it is up."""
        display_name = self.viewer.display_name

        def window() -> int | None:
            self.windows()
            return window_id(display_name, title)

        return wait_until_blocking(window, timeout, f"a window {title!r}", self.viewer.viewer)


@pytest.fixture
def login_viewer(tmp_path: Path) -> Iterator[Callable[..., LoginViewer]]:
    """Factory: vncviewer on its own Xvfb, logging in with X509Plain."""
    need("Xvfb", "to give vncviewer a screen")
    need("vncviewer", "to log in from a real VNC viewer")
    started: list[LoginViewer] = []

    def start(port: int, ca: str, user: str, password: str) -> LoginViewer:
        workdir = tmp_path / f"viewer-{len(started)}"
        workdir.mkdir(parents=True)
        xvfb, display = start_xvfb(workdir)
        env = {
            **os.environ,
            "DISPLAY": f":{display}",
            "HOME": str(workdir),  # no certificates or known hosts from elsewhere
            "VNC_USERNAME": user,
            "VNC_PASSWORD": password,
        }
        argv = [
            "vncviewer",
            *VIEWER_OPTIONS,
            "-SecurityTypes",
            "X509Plain",  # on loopback thinserve offers None first
            "-X509CA",
            ca,
            f"127.0.0.1::{port}",
        ]
        try:
            process = spawn(argv, workdir / "vncviewer.log", env)
        except BaseException:
            xvfb.stop()
            raise
        viewer = LoginViewer(TigerViewer(xvfb, display, process, workdir))
        started.append(viewer)
        return viewer

    yield start
    for viewer in reversed(started):
        viewer.viewer.stop()


def mapped_windows(display_name: str) -> list[tuple[str, Box]]:
    display = open_display(display_name)
    try:
        found = []
        for window in display.screen().root.query_tree().children:
            try:
                if window.get_attributes().map_state != X.IsViewable:
                    continue
                geometry = window.get_geometry()
                title = window.get_wm_name() or ""
            except XError:
                continue  # gone while we looked
            found.append((str(title), (geometry.x, geometry.y, geometry.width, geometry.height)))
        return found
    finally:
        display.close()


def window_id(display_name: str, title: str) -> int | None:
    display = open_display(display_name)
    try:
        for window in display.screen().root.query_tree().children:
            try:
                if (
                    window.get_wm_name() == title
                    and window.get_attributes().map_state == X.IsViewable
                ):
                    return int(window.id)
            except XError:
                continue
        return None
    finally:
        display.close()


def press_escape(display_name: str, window: int) -> None:
    """Focus ``window`` and press Escape on the keyboard (XTEST), as a user would."""
    display = open_display(display_name)
    try:
        target = display.create_resource_object("window", window)
        target.set_input_focus(X.RevertToParent, X.CurrentTime)
        display.sync()
        code = display.keysym_to_keycode(XK.string_to_keysym("Escape"))
        xtest.fake_input(display, X.KeyPress, code)
        xtest.fake_input(display, X.KeyRelease, code)
        display.sync()
    finally:
        display.close()


def showed_desktop(viewer: LoginViewer) -> list[Box]:
    """Windows the viewer mapped at the desktop's size (its desktop window)."""
    return [box for _, box in viewer.seen if box[2:] == SIZE]


# -- a second source: thinserve's own client, logging in with X509Plain ----------------------
class LoginTerminal(Terminal):
    async def log_in(self, port: int, source: str, user: str, password: str, ca: str) -> None:
        options = rfbclient.ClientOptions(
            username=user,
            password=password,
            methods=(VeNCryptSubtype.X509_PLAIN,),
            ca_file=ca,
        )
        endpoint = f"{rfbclient.tcp('127.0.0.1', port)}:bindAddress={source}"
        self.proto = await rfbclient.connect(endpoint, options, self._on_event)
        self.proto.closed.addBoth(self._closed)
        await wait_until(lambda: self.updates > 0 or self.closed, 20, "the login's answer")
        assert not self.closed, f"the login from {source} was refused: {self.proto.error}"


# -- the tests -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_viewer_logs_in_and_shows_the_users_desktop(
    xvnc, login_viewer, tmp_path: Path
) -> None:
    site = await start_site(xvnc, tmp_path)
    try:
        viewer = login_viewer(site.port, site.ca, USER, PASSWORD)
        want = site.picture
        shown = await threads.deferToThread(
            viewer.viewer.wait_for_frame,
            lambda img: img.shape == want.shape and np.array_equal(img, want),
            60.0,
        )
        assert shown.shape == want.shape and np.array_equal(shown, want), diff_summary(shown, want)
        [(action, actor, subject)] = site.logins()
        assert (action, actor) == ("login", f"user:{USER}")
        assert site.ts.hub is not None
        assert site.ts.hub.broker.snapshot().logins == {subject: USER}
    finally:
        await site.ts.stopService()


@pytest_twisted.ensureDeferred
async def test_viewer_with_a_wrong_password_is_refused_with_the_reason(
    xvnc, login_viewer, tmp_path: Path
) -> None:
    site = await start_site(xvnc, tmp_path)
    try:
        viewer = login_viewer(site.port, site.ca, USER, "not the password")
        await threads.deferToThread(viewer.wait_exit)
        assert f"Authentication failure: {WRONG}" in viewer.log, viewer.log
        assert site.logins() == [("login-failed", f"user:{USER}", "from 127.0.0.1")]
        assert site.audit("login-failed")[0].detail == "wrong secret"
        assert showed_desktop(viewer) == [], viewer.seen
        site.never_attached()
    finally:
        await site.ts.stopService()


@pytest_twisted.ensureDeferred
async def test_viewer_refuses_a_certificate_its_ca_did_not_sign(
    xvnc, login_viewer, tmp_path: Path
) -> None:
    site = await start_site(xvnc, tmp_path)
    # Another key under the same name: what an impostor of this server shows.
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    make_self_signed(str(other_cert), str(other_key), common_name(site.ca))
    try:
        viewer = login_viewer(site.port, str(other_cert), USER, PASSWORD)
        await threads.deferToThread(viewer.wait_exit)
        # GnuTLS: the certificate's signature is not the CA's (status INVALID | SIGNATURE_FAILURE).
        failure = "Authentication failure: Invalid status of server certificate verification"
        assert failure in viewer.log, viewer.log
        assert site.logins() == []  # the password never reached thinserve
        assert showed_desktop(viewer) == [], viewer.seen
        site.never_attached()
    finally:
        await site.ts.stopService()


@pytest_twisted.ensureDeferred
async def test_viewer_asks_before_trusting_an_unknown_issuer(
    xvnc, login_viewer, tmp_path: Path
) -> None:
    site = await start_site(xvnc, tmp_path)
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    make_self_signed(str(other_cert), str(other_key), "some-other-ca.example")
    try:
        viewer = login_viewer(site.port, str(other_cert), USER, PASSWORD)
        # thinserve's certificate does not chain to the CA given: TigerVNC
        # stops before sending the password and asks whether to trust it.
        dialog = await threads.deferToThread(viewer.wait_window, "Unknown certificate issuer")
        assert site.logins() == []
        await threads.deferToThread(press_escape, viewer.viewer.display_name, dialog)  # "No"
        await threads.deferToThread(viewer.wait_exit)
        assert "Authentication failure: Unknown certificate issuer" in viewer.log, viewer.log
        assert not (viewer.viewer.workdir / ".vnc" / "x509_known_hosts").exists()
        assert site.logins() == []  # the password never reached thinserve
        assert showed_desktop(viewer) == [], viewer.seen
        site.never_attached()
    finally:
        await site.ts.stopService()


@pytest_twisted.ensureDeferred
async def test_password_checks_from_one_source_are_bounded(
    xvnc, login_viewer, tmp_path: Path
) -> None:
    limit = 2
    broker = BrokerConfig(
        unknown_terminal="login",
        hot_desk=True,
        login_failures_per_terminal=RateLimit(limit, 600.0),  # per source address
        login_failures_per_user=RateLimit(100, 600.0),
    )
    site = await start_site(xvnc, tmp_path, broker)
    other = LoginTerminal()
    try:
        for _ in range(limit):
            viewer = login_viewer(site.port, site.ca, USER, "guess")
            await threads.deferToThread(viewer.wait_exit)
            assert WRONG in viewer.log, viewer.log
        # The right password, from the same source: refused without a check.
        viewer = login_viewer(site.port, site.ca, USER, PASSWORD)
        await threads.deferToThread(viewer.wait_exit)
        assert TOO_MANY in viewer.log, viewer.log
        assert WRONG not in viewer.log
        assert showed_desktop(viewer) == [], viewer.seen
        attempt = (f"user:{USER}", "from 127.0.0.1")
        assert site.logins() == [("login-failed", *attempt)] * limit + [("login-refused", *attempt)]
        assert site.audit("login-refused")[0].detail.startswith("rate limited for ")
        site.never_attached()
        # Another source is not held back by the first one's failures.
        await other.log_in(site.port, "127.0.0.2", USER, PASSWORD, site.ca)
        await other.wait_screen(site.picture)
        assert site.logins()[-1][:2] == ("login", f"user:{USER}")
    finally:
        other.close()
        await site.ts.stopService()
