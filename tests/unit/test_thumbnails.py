"""Thumbnails of real mirrors and screens: what is encoded, when, and what the JPEG shows."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.web.test.requesthelper import DummyRequest

from protocols.rfb.encodings import Rect
from tests.support.pixels import rgb_to_u32, u32_to_rgb
from thinserve.dashboard.thumbnails import (
    JITTER,
    MAX_ENCODING,
    MAX_SIDE,
    MIN_INTERVAL,
    RESYNC,
    TICK,
    WATCH_WINDOW,
    ThumbnailResource,
    Thumbnails,
)
from thinserve.hub import Hub
from thinserve.relay import screens
from thinserve.relay.drawn import DrawnScreen
from thinserve.relay.source import Source
from thinserve.relay.upstream import Mirror


# -- the parts around Thumbnails ----------------------------------------------------------
@dataclass
class Session:
    """What thumbnails read of a TerminalSession: the source it shows now."""

    view: Source | None


@dataclass
class Terminal:
    session: Session


@dataclass
class HubParts:
    """The hub's desktops and terminals, as the hub files them."""

    mirrors: dict[str, Mirror] = field(default_factory=dict)
    terminals: dict[str, Terminal] = field(default_factory=dict)
    on_change: list[Callable[[], None]] = field(default_factory=list)


class InlineRunner:
    """Runs the work at once, as a worker thread would, and notes when."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.times: list[float] = []

    @property
    def runs(self) -> int:
        return len(self.times)

    def run(self, work: Callable[[], bytes]) -> Deferred[bytes]:
        self.times.append(self.clock.seconds())
        return succeed(work())


class HeldRunner:
    """Keeps the work until ``release``: shows how many run at once."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[[], bytes], Deferred[bytes]]] = []

    def run(self, work: Callable[[], bytes]) -> Deferred[bytes]:
        done: Deferred[bytes] = Deferred()
        self.held.append((work, done))
        return done

    def release(self) -> None:
        held, self.held = self.held, []
        for work, done in held:
            done.callback(work())


def blocks(width: int, height: int, seed: int) -> np.ndarray:
    """A picture of flat 32x32 blocks in random colours (JPEG keeps flat areas well)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 0x1000000, size=(-(-height // 32), -(-width // 32)), dtype=np.uint32)
    return np.kron(colours, np.ones((32, 32), dtype=np.uint32))[:height, :width]


def mirror_showing(name: str, frame: np.ndarray) -> Mirror:
    mirror = Mirror(name)
    mirror.take_framebuffer(frame.copy())
    return mirror


def draw(mirror: Mirror, frame: np.ndarray, rect: Rect) -> None:
    """An upstream update: ``rect`` of ``frame`` lands in the mirror."""
    ys, xs = slice(rect.y, rect.y + rect.h), slice(rect.x, rect.x + rect.w)
    mirror.framebuffer[ys, xs] = frame[ys, xs]
    mirror.updated([], [rect])


def decode(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return rgb_to_u32(np.asarray(image.convert("RGB")))


def scaled(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(u32_to_rgb(frame))
    return rgb_to_u32(np.asarray(image.resize(size, Image.Resampling.BOX)))


def assert_looks_like(got: np.ndarray, want: np.ndarray) -> None:
    """Equal but for JPEG's errors: small, but for colours bleeding at the blocks' edges
    (two random pictures differ by about 85 on average)."""
    assert got.shape == want.shape
    diff = np.abs(u32_to_rgb(got).astype(int) - u32_to_rgb(want).astype(int))
    assert diff.mean() < 8, f"mean difference {diff.mean():.1f}"
    assert np.median(diff) <= 3, f"median difference {np.median(diff)}"


class Setup:
    def __init__(self, runner: Any = None) -> None:
        self.clock = task.Clock()
        self.clock.advance(1000.0)
        self.hub = HubParts()
        self.runner = runner or InlineRunner(self.clock)
        self.thumbs = Thumbnails(cast(Hub, self.hub), self.clock, self.runner)
        self.changes = 0
        self.thumbs.on_change.append(self.count_change)

    def count_change(self) -> None:
        self.changes += 1

    def hub_changed(self) -> None:
        """What the hub does after a terminal's screen changed."""
        for callback in list(self.hub.on_change):
            callback()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, tick by tick."""
        steps = round(seconds / TICK)
        for _ in range(steps):
            self.clock.advance(TICK)


@pytest.fixture
def setup() -> Setup:
    return Setup()


# -- pictures -----------------------------------------------------------------------------
def test_a_changed_mirror_gets_a_new_version_showing_its_pixels(setup: Setup) -> None:
    first, second = blocks(640, 480, 1), blocks(640, 480, 2)
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", first)
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    version, jpeg = setup.thumbs.image("desktop", "d1") or (0, b"")
    assert version and setup.thumbs.versions() == {"desktop/d1": version}
    assert_looks_like(decode(jpeg), scaled(first, (320, 240)))

    draw(mirror, second, Rect(0, 0, 640, 480))
    setup.advance(MIN_INTERVAL)
    newer, jpeg = setup.thumbs.image("desktop", "d1") or (0, b"")
    assert newer > version
    assert_looks_like(decode(jpeg), scaled(second, (320, 240)))
    assert setup.changes == 2


def test_the_longest_side_is_320_pixels(setup: Setup) -> None:
    setup.hub.mirrors["wide"] = mirror_showing("wide", blocks(1280, 400, 3))
    setup.hub.mirrors["small"] = mirror_showing("small", blocks(200, 100, 4))
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    sizes = {}
    for name in ("wide", "small"):
        _, jpeg = setup.thumbs.image("desktop", name) or (0, b"")
        sizes[name] = decode(jpeg).shape
    assert sizes == {"wide": (100, MAX_SIDE), "small": (100, 200)}


def test_an_unchanged_source_is_never_encoded_again(setup: Setup) -> None:
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(640, 480, 1))
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    assert setup.thumbs.encodes == 1
    setup.advance(30)
    mirror.updated([], [])  # an update that changed nothing
    setup.advance(5)
    assert setup.thumbs.encodes == 1 and setup.runner.runs == 1
    assert setup.changes == 1


def test_nothing_is_encoded_while_no_one_watches(setup: Setup) -> None:
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(640, 480, 1))
    setup.thumbs.start()
    setup.advance(5)
    draw(mirror, blocks(640, 480, 2), Rect(0, 0, 64, 64))
    setup.advance(5)
    assert setup.thumbs.encodes == 0
    assert setup.clock.getDelayedCalls() == []  # not even a timer

    setup.thumbs.add_watcher()
    assert setup.thumbs.encodes == 1
    setup.thumbs.remove_watcher()
    setup.advance(1)
    assert setup.clock.getDelayedCalls() == []
    draw(mirror, blocks(640, 480, 3), Rect(0, 0, 64, 64))
    setup.advance(5)
    assert setup.thumbs.encodes == 1


def test_a_fetch_keeps_pictures_fresh_for_a_while(setup: Setup) -> None:
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(640, 480, 1))
    setup.thumbs.start()
    assert setup.thumbs.known("desktop", "d1")
    assert setup.thumbs.encodes == 1
    draw(mirror, blocks(640, 480, 2), Rect(0, 0, 64, 64))
    setup.advance(1)
    assert setup.thumbs.encodes == 2
    setup.advance(WATCH_WINDOW)
    draw(mirror, blocks(640, 480, 3), Rect(0, 0, 64, 64))
    setup.advance(5)
    assert setup.thumbs.encodes == 2
    assert setup.clock.getDelayedCalls() == []


def test_at_most_two_encodes_a_second_per_picture(setup: Setup) -> None:
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(640, 480, 1))
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    for step in range(100):  # a change every 50 ms for 5 s
        draw(mirror, blocks(640, 480, step), Rect(0, 0, 32, 32))
        setup.clock.advance(0.05)
    gaps = np.diff(setup.runner.times)
    assert gaps.min() >= MIN_INTERVAL - JITTER, gaps
    assert 9 <= setup.thumbs.encodes <= 11, gaps


def test_at_most_max_encoding_pictures_at_once() -> None:
    runner = HeldRunner()
    setup = Setup(runner)
    for number in range(10):
        setup.hub.mirrors[f"d{number}"] = mirror_showing(f"d{number}", blocks(64, 48, number))
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    done = 0
    while len(setup.thumbs.versions()) < 10:
        assert len(runner.held) == MAX_ENCODING
        runner.release()  # each finished encode starts the next one
        done += MAX_ENCODING
        assert len(setup.thumbs.versions()) == done
    assert setup.thumbs.encodes == 10


def test_a_terminal_picture_follows_what_the_terminal_shows(setup: Setup) -> None:
    one, two = blocks(640, 480, 1), blocks(640, 480, 2)
    first = setup.hub.mirrors["d1"] = mirror_showing("d1", one)
    second = setup.hub.mirrors["d2"] = mirror_showing("d2", two)
    pairing = DrawnScreen(screens.pairing("T1", "123456", ""), 640, 480)
    session = Session(pairing)
    setup.hub.terminals["T1"] = Terminal(session)
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    _, jpeg = setup.thumbs.image("terminal", "T1") or (0, b"")
    assert_looks_like(decode(jpeg), scaled(pairing.framebuffer, (320, 240)))

    session.view = first
    setup.hub_changed()
    setup.advance(MIN_INTERVAL)
    _, jpeg = setup.thumbs.image("terminal", "T1") or (0, b"")
    assert_looks_like(decode(jpeg), scaled(one, (320, 240)))
    session.view = second
    setup.hub_changed()
    setup.advance(MIN_INTERVAL)
    version, jpeg = setup.thumbs.image("terminal", "T1") or (0, b"")
    assert_looks_like(decode(jpeg), scaled(two, (320, 240)))
    picture = setup.thumbs.pictures["terminal/T1"]
    assert picture not in first.listeners and picture not in pairing.listeners

    draw(first, blocks(640, 480, 3), Rect(0, 0, 640, 480))  # no longer its picture
    setup.advance(2)
    assert (setup.thumbs.image("terminal", "T1") or (0, b""))[0] == version

    del setup.hub.terminals["T1"]  # disconnected
    setup.hub_changed()
    setup.advance(TICK)
    assert "terminal/T1" not in setup.thumbs.versions()
    assert picture not in second.listeners


def test_a_screen_replaced_without_a_hub_change_is_followed_within_resync(setup: Setup) -> None:
    one, two = blocks(640, 480, 1), blocks(640, 480, 2)
    session = Session(mirror_showing("v1", one))
    setup.hub.terminals["T1"] = Terminal(session)
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    session.view = mirror_showing("v2", two)  # a resize's scaled view: no hub change
    setup.advance(RESYNC)
    _, jpeg = setup.thumbs.image("terminal", "T1") or (0, b"")
    assert_looks_like(decode(jpeg), scaled(two, (320, 240)))


def test_stop_unsubscribes_everything(setup: Setup) -> None:
    mirror = setup.hub.mirrors["d1"] = mirror_showing("d1", blocks(64, 48, 1))
    view = mirror_showing("v", blocks(64, 48, 2))
    setup.hub.terminals["T1"] = Terminal(Session(view))
    setup.thumbs.start()
    setup.thumbs.add_watcher()
    assert mirror.listeners and view.listeners
    assert setup.hub.on_change  # it follows the terminals' screens
    setup.thumbs.stop()
    assert mirror.listeners == [] and view.listeners == []
    assert setup.clock.getDelayedCalls() == []
    assert setup.hub.on_change == []


# -- the resource -------------------------------------------------------------------------
def get(resource: ThumbnailResource, path: str, etag: str | None = None) -> DummyRequest:
    request = DummyRequest(path.encode().split(b"/"))
    if etag is not None:
        request.requestHeaders.setRawHeaders(b"If-None-Match", [etag.encode()])
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
        request.finish()
    return request


def test_the_resource_answers_with_etag_and_304(setup: Setup) -> None:
    frame = blocks(640, 480, 1)
    setup.hub.mirrors["d1"] = mirror_showing("d1", frame)
    setup.thumbs.start()
    resource = ThumbnailResource(setup.thumbs)
    first = get(resource, "desktops/d1.jpg")  # waits for the first encode, then answers
    assert first.finished and first.responseCode in (None, 200)
    etag = first.responseHeaders.getRawHeaders(b"ETag")[0].decode()
    assert etag == f'"{setup.thumbs.versions()["desktop/d1"]}"'
    assert first.responseHeaders.getRawHeaders(b"Cache-Control") == [b"no-cache"]
    assert first.responseHeaders.getRawHeaders(b"Content-Type") == [b"image/jpeg"]
    assert_looks_like(decode(b"".join(first.written)), scaled(frame, (320, 240)))

    again = get(resource, "desktops/d1.jpg", etag)
    assert again.responseCode == 304 and b"".join(again.written) == b""


def test_unknown_names_get_a_json_404(setup: Setup) -> None:
    setup.hub.mirrors["office-1"] = mirror_showing("office-1", blocks(64, 48, 1))
    setup.thumbs.start()
    resource = ThumbnailResource(setup.thumbs)
    for path in ("desktops/office-2.jpg", "terminals/T9.jpg", "printers/p.jpg", "x"):
        request = get(resource, path)
        assert request.responseCode == 404, path
        body = json.loads(b"".join(request.written))
        assert body["code"] == "not_found" and body["message"] == body["error"] and body["hint"]
    body = json.loads(b"".join(get(resource, "desktops/office-2.jpg").written))
    assert "office-1" in body["hint"]
