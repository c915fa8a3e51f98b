"""The terminal: one screen, one session at a time, input from pygame or a script.

``TerminalApp`` ties the parts together on Twisted's reactor: the mode
(listen, connect or find) brings connections, the current ``RFBSession``
draws on the ``Display``, and a LoopingCall polls pygame about 60 times a
second (pygame never blocks the reactor), routes its events to the
keyboard and pointer and renders what changed.  Without a session the
status screen says what the terminal waits for, refreshed every second.

Every connection shows the terminal's client certificate (its key, see
identity.py) in VeNCrypt's X509 subtypes and checks the server's
certificate (trust.py): against ``--ca``, or against the key recorded for
that server in ``known_servers``.  A refused server is named on the status
screen until a session starts.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import pygame
from twisted.internet import defer, stdio, task
from twisted.python.failure import Failure

from protocols.rfb.client import ClientEvent
from protocols.rfb.constants import SecurityType, VeNCryptSubtype
from thinserve.discovery import local_addresses
from thinserve.rfbclient import ClientOptions, RFBClientProtocol

from .advert import default_instance_name
from .clipboard import FileClipboard, LocalClipboard, SDLClipboard
from .connection import TerminalFactory, TerminalProtocol
from .dialer import DialMode
from .display import Display
from .events import EventRouter
from .finder import ServerFinder
from .identity import TerminalKey
from .input import Keyboard, Pointer
from .listener import ListenMode
from .options import MODEL, Options
from .recorder import Recorder
from .script import LineFeeder, ScriptRunner, feed_file
from .session import RFBSession
from .trust import KNOWN_SERVERS, KnownServers, PinnedCA, TrustOnFirstUse

log = logging.getLogger(__name__)

TICK = 1 / 60  # pygame polls per second
STATUS_REFRESH = 1.0
NOT_TRUSTED = "The server is not trusted"


class Mode(Protocol):
    def start(self) -> None: ...
    def stop(self) -> defer.Deferred[None]: ...
    def session_ended(self, lasted: float, why: str = ...) -> None: ...
    def status(self) -> tuple[str, list[str]]: ...
    def server_name(self) -> str | None: ...


class TerminalApp:
    def __init__(self, reactor: Any, options: Options, key: TerminalKey, display: Display) -> None:
        self.reactor = reactor
        self.options = options
        self.key = key
        self.terminal_id = key.terminal_id
        self.display = display
        self.known_servers = KnownServers(key.path.parent / KNOWN_SERVERS)
        self.client_options = replace(
            client_options(options), client_certificate=key.client_certificate()
        )
        self.not_trusted: list[str] | None = None  # why the last server was refused
        self.session: RFBSession | None = None
        self.keyboard = Keyboard(self._target)
        self.pointer = Pointer(self._target)
        self.clipboard: LocalClipboard = (
            FileClipboard(options.clipboard_file) if options.headless else SDLClipboard()
        )
        self.recorder = Recorder(options.record) if options.record else None
        self.finder: ServerFinder | None = None
        self.mode = self._make_mode()
        self.router = EventRouter(
            display, self.keyboard, self.pointer, self.quit, self._local_clipboard_changed
        )
        self.script: ScriptRunner | None = None
        self.exit_code = 0
        self._ready: list[defer.Deferred[None]] = []
        self._updates: list[defer.Deferred[None]] = []
        self._tick = task.LoopingCall(self._poll)
        self._status = task.LoopingCall(self._refresh_status)
        self._stopping = False

    def _make_mode(self) -> Mode:
        options, factory = self.options, TerminalFactory(self)
        if options.mode == "listen":
            return ListenMode(
                self.reactor,
                factory,
                self.key.fingerprint,
                self.key.shown_id,
                options.port,
                options.interfaces,
                options.ipv4_only,
                options.name or default_instance_name(),
                MODEL,
                self.display.size,
            )
        addresses = list(options.interfaces) or None

        def ours() -> list[str]:
            return addresses or local_addresses(options.ipv4_only)

        if options.mode == "connect":
            servers = list(options.servers)
            return DialMode(self.reactor, factory, lambda: servers, self.key.shown_id, ours, "")
        self.finder = ServerFinder(options.find_name, options.interfaces, options.ipv4_only)
        searching = f"Looking for {options.find_name} on the network (mDNS)..."
        return DialMode(
            self.reactor, factory, self.finder.targets, self.key.shown_id, ours, searching
        )

    # -- life ---------------------------------------------------------------------------------
    def start(self) -> None:
        log.info(
            "terminal id %s (key %s), screen %dx%d",
            self.key.shown_id,
            self.key.path,
            *self.display.size,
        )
        try:
            if self.finder is not None:
                self.finder.start().addErrback(self._fatal, "mDNS browsing failed")
            self.mode.start()
        except Exception as exc:
            self._fatal(Failure(exc), "cannot start")
            return
        self._refresh_status()
        self._tick.start(TICK, now=False).addErrback(self._fatal, "the event loop failed")
        self._status.start(STATUS_REFRESH, now=False)
        self._start_script()

    def _start_script(self) -> None:
        source = self.options.script
        if source is None:
            return
        self.script = ScriptRunner(self.reactor, self)
        self.script.done.addErrback(self._fatal, "the script failed")
        if source == "-":
            stdio.StandardIO(LineFeeder(self.script.feed), reactor=self.reactor)
        else:
            feed_file(self.script, source)

    def stop(self) -> defer.Deferred[None]:
        """Before the reactor stops: end the session, withdraw the advert."""
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        for loop in (self._tick, self._status):
            if loop.running:
                loop.stop()
        if self.session is not None:
            self.keyboard.release_all()
            self.session.close()
        await self.mode.stop()
        if self.finder is not None:
            await self.finder.stop()

    def quit(self) -> None:
        log.info("quitting")
        if self.reactor.running and not self._stopping:
            self._stopping = True
            self.reactor.stop()

    def _fatal(self, failure: Failure, what: str) -> None:
        log.error("%s: %s", what, failure.getErrorMessage())
        if failure.check(Exception) and not failure.check(OSError):
            log.debug("details", exc_info=(failure.type, failure.value, failure.tb))
        self.exit_code = 1
        self.quit()

    # -- connections (TerminalProtocol) -----------------------------------------------------
    def connection_options(self) -> ClientOptions:
        """The client certificate, the server check and the methods, per connection.

        A server pinned by --ca or already in known_servers must use an X509
        subtype, so it cannot be talked down to an unchecked connection;
        one met for the first time may also use None (or VNC
        Authentication), for servers without VeNCrypt.
        """
        name = self.mode.server_name()
        check: PinnedCA | TrustOnFirstUse
        if self.options.ca_file is not None:
            check, pinned = PinnedCA(self.options.ca_file), True
        else:
            check = TrustOnFirstUse(self.known_servers, name)
            try:
                pinned = name is not None and self.known_servers.get(name) is not None
            except OSError:
                pinned = True  # the check itself will fail, and say why
        password = self.client_options.password is not None
        methods = terminal_methods(password, fallback=not pinned)
        return replace(self.client_options, methods=methods, server_check=check)

    def connection_made(self, proto: TerminalProtocol) -> bool:
        peer = _peer(proto)
        if self.session is not None or self._stopping:
            log.info("turning away %s: a session is running", peer)
            return False
        log.info("connected with %s", peer)
        self.session = RFBSession(
            proto,
            self.display.size,
            self.options.quality,
            self.display,
            self._updated,
            self.clipboard.put,
        )
        return True

    def connection_lost(self, proto: TerminalProtocol, reason: Failure) -> None:
        session = self.session
        if session is None or session.proto is not proto:
            return
        self.keyboard.pressed.clear()  # the server forgets them with the connection
        self.pointer.buttons = 0
        self.session = None
        lasted = time.monotonic() - session.started
        why = proto.error or reason.getErrorMessage()
        log.info("session ended after %.1f s: %s", lasted, why)
        self.display.forget()
        refusal = getattr(proto.options.server_check, "refusal", None)
        if refusal:
            self.not_trusted = list(refusal)
            self.mode.session_ended(lasted, "the server is not trusted")
        else:
            self.mode.session_ended(lasted)
        if not self._stopping:
            self._refresh_status()

    def rfb_event(self, proto: RFBClientProtocol, event: ClientEvent) -> None:
        if self.session is not None and self.session.proto is proto:
            self.session.handle(event)

    def _target(self) -> RFBSession | None:
        session = self.session
        return session if session is not None and session.initialised else None

    # -- what the session reports ------------------------------------------------------------
    def _updated(self, session: RFBSession) -> None:
        self.not_trusted = None
        if self.display.showing_status:
            self.display.show_session()
        if self.recorder is not None:
            self.recorder.record(session.framebuffer)
        self._fire(self._updates)
        self._fire(self._ready)

    @staticmethod
    def _fire(waiters: list[defer.Deferred[None]]) -> None:
        fired = list(waiters)
        waiters.clear()
        for waiter in fired:
            waiter.callback(None)

    def _local_clipboard_changed(self) -> None:
        text = self.clipboard.changed()
        if text is not None:
            self.send_clipboard(text)

    # -- ScriptHost ----------------------------------------------------------------------------
    def when_ready(self) -> defer.Deferred[None]:
        """Fires once a session shows the server's screen (at once if one does)."""
        if self.session is not None and self.session.ready:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._ready.append(waiter)
        return waiter

    def next_update(self) -> defer.Deferred[None]:
        waiter: defer.Deferred[None] = defer.Deferred()
        self._updates.append(waiter)
        return waiter

    def send_clipboard(self, text: str) -> None:
        if self._target() is not None:
            self.session.clipboard(text)  # type: ignore[union-attr]

    # -- loops ------------------------------------------------------------------------------------
    def _poll(self) -> None:
        self.router.handle(pygame.event.get())
        self.display.render()

    def _refresh_status(self) -> None:
        session = self.session
        if self._stopping or (session is not None and session.ready):
            return
        title, lines = self.mode.status()
        if session is not None:
            title, lines = "Starting the session...", [f"Terminal id: {self.key.shown_id}"]
        elif self.not_trusted:
            title, lines = NOT_TRUSTED, [*self.not_trusted, "", *lines]
        self.display.show_status(title, lines)


def client_options(options: Options) -> ClientOptions:
    password = None
    if options.password_file is not None:
        password = read_password(options.password_file)
    return ClientOptions(password=password, ca_file=options.ca_file)


def terminal_methods(password: bool, fallback: bool) -> Sequence[int]:
    """Security methods, best first: VeNCrypt X509 subtypes (the key is proven,
    the server checked), then, with ``fallback``, None or VNC Authentication.

    The client picks VeNCrypt whenever the server offers it, so a server
    with X509 subtypes never gets an unchecked connection; anonymous TLS
    (no server to check, no key to prove) is never used.
    """
    methods: list[int] = [VeNCryptSubtype.X509_NONE]
    if password:
        methods.insert(0, VeNCryptSubtype.X509_VNC)
    if fallback:
        methods += [SecurityType.VNC_AUTH, SecurityType.NONE] if password else [SecurityType.NONE]
    return tuple(int(m) for m in methods)


def read_password(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


def _peer(proto: TerminalProtocol) -> str:
    try:
        peer = proto.transport.getPeer()  # type: ignore[union-attr]
        return f"{peer.host}:{peer.port}"
    except Exception:
        return "?"


def run(options: Options, key: TerminalKey) -> int:
    """Run the terminal until it quits; its exit code."""
    from twisted.internet import reactor

    display = Display(options.window)
    app = TerminalApp(reactor, options, key, display)
    reactor.callWhenRunning(app.start)  # type: ignore[attr-defined]
    reactor.addSystemEventTrigger("before", "shutdown", app.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    display.close()
    sys.stdout.flush()
    return app.exit_code
