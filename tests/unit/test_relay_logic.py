"""Damage tracking, scaled views and the config file: logic without sockets."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols.rfb.encodings import Rect
from protocols.rfb.server import Cursor
from thinserve.config import ConfigError, address_to_endpoint, from_dict
from thinserve.damage import (
    JOIN_PIXELS,
    Damage,
    changed_tiles,
    clipped,
    grid_rects,
    joined,
    tiles_covered,
)
from thinserve.relay.scaling import ScaledSource
from thinserve.relay.screens import ScreenText, render
from thinserve.relay.source import Copy, Source

from .content import desktop_frame


def _covered(rects: list[Rect], shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for r in rects:
        mask[r.y : r.y + r.h, r.x : r.x + r.w] = True
    return mask


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 300), st.integers(0, 200), st.integers(1, 80), st.integers(1, 80)),
        max_size=12,
    )
)
def test_damage_rects_cover_every_damaged_pixel(boxes: list[tuple[int, int, int, int]]) -> None:
    damage = Damage(300, 200)
    wanted = np.zeros((200, 300), dtype=bool)
    for x, y, w, h in boxes:
        damage.add(Rect(x, y, w, h))
        wanted[y : y + h, x : x + w] = True
    rects = damage.rects()
    covered = _covered(rects, (200, 300))
    assert not (wanted & ~covered).any()
    assert all(r.x + r.w <= 300 and r.y + r.h <= 200 for r in rects)
    overlap = np.zeros((200, 300), dtype=np.int32)
    for r in rects:
        overlap[r.y : r.y + r.h, r.x : r.x + r.w] += 1
    assert overlap.max(initial=0) <= 1  # no pixel is sent twice


def test_damage_take_forgets_what_was_taken() -> None:
    damage = Damage(100, 100)
    damage.add(Rect(5, 5, 10, 10))
    assert damage.take() == [Rect(0, 0, 16, 16)]
    assert not damage and damage.take() == []


def _tiles_of(mask: np.ndarray) -> np.ndarray:
    """The 16x16 tiles of a 100x100 pixel mask that hold any set pixel."""
    padded = np.zeros((112, 112), dtype=bool)
    padded[:100, :100] = mask
    return padded.reshape(7, 16, 7, 16).any(axis=(1, 3))


def _inside(x: int, y: int, w: int, h: int) -> np.ndarray:
    """The tiles whose pixels (on the 100x100 screen) lie wholly inside a rectangle."""
    spans = [(t * 16, min(t * 16 + 16, 100)) for t in range(7)]
    cols = np.array([x <= a and b <= x + w for a, b in spans])
    rows = np.array([y <= a and b <= y + h for a, b in spans])
    inside: np.ndarray = rows[:, None] & cols[None, :]
    return inside


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(-20, 120), st.integers(-20, 120)),
            st.tuples(st.just("take"), st.integers(0, 100), st.integers(0, 100)),
            st.tuples(st.just("grid"), st.integers(0, 6), st.integers(0, 6)),
            st.tuples(st.just("clear"), st.just(0), st.just(0)),
            st.tuples(st.just("all"), st.just(0), st.just(0)),
        ),
        max_size=20,
    )
)
def test_damage_follows_a_model_and_never_writes_a_grid_it_was_handed(
    steps: list[tuple[str, int, int]],
) -> None:
    """The tiles left damaged match a model kept from pixels, whether any
    are left is known however they were added and taken (the answer is
    remembered between changes), and every grid handed to ``add_grid``
    (the same one goes to every terminal watching) keeps its content."""
    damage = Damage(100, 100)
    model = np.zeros((7, 7), dtype=bool)
    handed: list[tuple[np.ndarray, np.ndarray]] = []
    for kind, a, b in steps:
        if kind == "add":
            damage.add(Rect(a, b, 10, 10))
            mask = np.zeros((100, 100), dtype=bool)
            mask[max(b, 0) : max(b + 10, 0), max(a, 0) : max(a + 10, 0)] = True
            model |= _tiles_of(mask)
        elif kind == "take":
            damage.take(Rect(a, b, 40, 40))
            model &= ~_inside(a, b, 40, 40)
        elif kind == "grid":
            grid = np.zeros((7, 7), dtype=bool)
            grid[a, b] = a % 3 != 0
            grid[b, a] = a % 2 == 0  # a = 3: a grid with nothing in it
            handed.append((grid, grid.copy()))
            damage.add_grid(grid)
            model |= grid
        elif kind == "all":
            damage.add_all()
            model[:] = True
        else:
            damage.clear()
            model[:] = False
        np.testing.assert_array_equal(damage.grid, model)
        assert bool(damage) == bool(model.any())
        for grid, content in handed:
            np.testing.assert_array_equal(grid, content)


def test_clipped_keeps_what_is_inside_and_cuts_the_rest() -> None:
    inside, across, outside = Rect(0, 0, 100, 50), Rect(90, 40, 20, 20), Rect(100, 0, 5, 5)
    kept = clipped([inside, across, outside], Rect(0, 0, 100, 50))
    assert kept == [inside, Rect(90, 40, 10, 10)]
    assert kept[0] is inside


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 250), st.integers(0, 150), st.integers(1, 50), st.integers(1, 50)),
        max_size=5,
    )
)
def test_tiles_covered_counts_the_tiles_rectangles_touch(
    boxes: list[tuple[int, int, int, int]],
) -> None:
    rects = [Rect(*box) for box in boxes]
    mask = np.zeros((208, 304), dtype=bool)  # whole 16x16 tiles
    for r in rects:
        mask[r.y : r.y + r.h, r.x : r.x + r.w] = True
    touched = int(mask.reshape(13, 16, 19, 16).any(axis=(1, 3)).sum())
    each = sum(
        len(range(r.y // 16, -(-(r.y + r.h) // 16))) * len(range(r.x // 16, -(-(r.x + r.w) // 16)))
        for r in rects
    )
    counted = tiles_covered(rects, most=64)
    assert counted == touched or (counted is None and each > 64)
    assert tiles_covered(rects, most=10_000) == touched


def coverage(rects: list[Rect]) -> np.ndarray:
    """How many of ``rects`` cover each pixel of a 1300x900 picture."""
    count = np.zeros((900, 1300), dtype=np.int8)
    for r in rects:
        count[r.y : r.y + r.h, r.x : r.x + r.w] += 1
    return count


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=4),
    st.lists(st.integers(1, 200), min_size=1, max_size=4),
    st.sets(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=16),
    st.lists(
        st.tuples(
            st.integers(0, 1000), st.integers(0, 700), st.integers(1, 300), st.integers(1, 200)
        ),
        max_size=3,
    ),
)
def test_joined_covers_the_same_pixels_in_fewer_rectangles(
    widths: list[int],
    heights: list[int],
    picked: set[tuple[int, int]],
    loose: list[tuple[int, int, int, int]],
) -> None:
    """Pieces of a grid (as a desktop's server cuts a change), some of them,
    and loose rectangles that may overlap them: the joined rectangles cover
    every pixel as often as before, never more, in no more rectangles, top
    to bottom (or, all small, are ``rects`` themselves)."""
    xs = np.cumsum([0, *widths]).tolist()
    ys = np.cumsum([0, *heights]).tolist()
    rects = [
        Rect(xs[col], ys[row], widths[col], heights[row])
        for row, col in sorted(picked)
        if row < len(heights) and col < len(widths)
    ]
    rects += [Rect(*box) for box in loose]
    out = joined(rects)
    np.testing.assert_array_equal(coverage(out), coverage(rects))
    assert len(out) <= len(rects)
    if all(r.area < JOIN_PIXELS for r in rects):
        assert out == rects  # small ones kept as they are
    else:
        assert [(r.y, r.x) for r in out] == sorted((r.y, r.x) for r in out)


def test_joined_makes_one_rectangle_of_a_change_cut_in_pieces() -> None:
    """A whole screen as Xvnc sends it (64K-pixel pieces: 34 rows at 1920;
    2048 columns at most): one rectangle, at either width.  Small
    neighbours are left as they are."""
    bands = [Rect(0, y, 1920, min(34, 1080 - y)) for y in range(0, 1080, 34)]
    assert joined(bands) == [Rect(0, 0, 1920, 1080)]
    wide = [
        Rect(x, y, 3840 - x if x else 2048, min(32, 2160 - y))
        for y in range(0, 2160, 32)
        for x in (0, 2048)
    ]
    assert joined(wide) == [Rect(0, 0, 3840, 2160)]
    rest = [Rect(232, 987, 728, 90), Rect(232, 1077, 728, 3)]  # a piece and what was left
    assert joined(rest) == [Rect(232, 987, 728, 93)]
    apart = [Rect(0, 0, 400, 100), Rect(401, 0, 400, 100), Rect(0, 101, 400, 100)]
    assert joined(apart) == apart  # not touching: nothing to join
    ell = [Rect(0, 0, 800, 100), Rect(0, 100, 400, 100)]
    assert joined(ell) == ell  # an L is two rectangles
    lines = [Rect(232, y, 728, 16) for y in range(987, 1067, 16)]
    assert joined(lines) == lines  # lines of text keep their own shapes


def test_grid_rects_merges_rows_with_the_same_runs() -> None:
    grid = np.zeros((4, 6), dtype=bool)
    grid[1:3, 2:5] = True
    assert grid_rects(grid) == [Rect(2, 1, 3, 2)]


def test_changed_tiles_finds_single_pixel_changes() -> None:
    old = desktop_frame(100, 50)
    new = old.copy()
    new[49, 99] ^= 1
    grid = changed_tiles(old, new)
    assert grid.sum() == 1 and grid[3, 6]


def test_scaled_view_follows_damage_and_maps_pointer() -> None:
    inner = Source(desktop_frame(320, 200))
    view = ScaledSource(inner, 160, 100)
    np.testing.assert_array_equal(view.framebuffer, inner.framebuffer[1::2, 1::2])
    seen: list[np.ndarray] = []

    class Listener:
        """Records the tiles the view reports changed; nothing else happens here."""

        def on_damage(self, grid: np.ndarray) -> None:
            seen.append(grid.copy())

        def on_update(self, copies: list[Copy], rects: list[Rect], grid: np.ndarray) -> None:
            self.on_damage(grid)

        def on_resize(self) -> None: ...
        def on_cursor(self, cursor: Cursor) -> None: ...
        def on_clipboard(self, text: str) -> None: ...
        def on_bell(self) -> None: ...
        def on_resize_answered(self, granted: bool) -> None: ...

    view.subscribe(Listener())
    changed = inner.framebuffer.copy()
    changed[100:120, 200:240] = 0x00FF00FF
    inner.set_frame(changed)
    np.testing.assert_array_equal(view.framebuffer, changed[1::2, 1::2])
    assert len(seen) == 1 and seen[0].any() and not seen[0].all()
    assert view.to_inner(80, 50) == (161, 101)
    view.close()
    assert view not in inner.listeners


def test_scaled_view_upscales_and_resizes() -> None:
    inner = Source(desktop_frame(100, 80))
    view = ScaledSource(inner, 250, 160)
    assert view.framebuffer.shape == (160, 250)
    assert (view.framebuffer[::2, ::5] == inner.framebuffer[:, ::2]).mean() > 0.95
    inner.set_frame(desktop_frame(60, 40, seed=2))
    assert view.framebuffer.shape == (160, 250)
    assert set(np.unique(view.framebuffer)) <= set(np.unique(inner.framebuffer))


def test_screens_render_at_any_size_with_visible_text() -> None:
    for width, height in ((640, 480), (1920, 1080), (320, 200)):
        fb = render(ScreenText("Pair this terminal", ("Code",), highlight="4711"), width, height)
        assert fb.shape == (height, width)
        assert len(np.unique(fb)) > 3  # background, text and highlight colours


def test_config_defaults_and_full_file() -> None:
    config = from_dict(
        {
            "server": {"listen": "tcp:5900", "password": "pw", "database": "/tmp/x.db"},
            "broker": {
                "unknown_terminal": "pool",
                "default_pool": "vms",
                "pools": {"vms": ["vm1", "vm2"]},
            },
            "discovery": {"interfaces": ["127.0.0.1"]},
            "desktop": [
                {"name": "vm1", "address": "127.0.0.1:5901", "encodings": ["tight", "raw"]},
                {"name": "vm2", "address": "[::1]:5902"},
                {"name": "vm3", "address": "unix:/run/vm3.sock"},
            ],
        }
    )
    assert config.listen == ("tcp:5900",) and config.database == "/tmp/x.db"
    assert config.broker.pools["vms"] == ("vm1", "vm2") and config.discovery_interfaces == (
        "127.0.0.1",
    )
    assert [d.endpoint for d in config.desktops] == [
        "tcp:host=127.0.0.1:port=5901",
        "tcp:host=\\:\\:1:port=5902",
        "unix:path=/run/vm3.sock",
    ]
    assert config.desktops[0].encodings == (7, 0)
    assert config.local_desktops == ()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"desktop": [{"name": "a", "address": "nowhere"}]}, "host:port"),
        ({"desktop": [{"name": "a", "address": "h:1", "colour": 1}]}, "unknown key"),
        ({"desktop": [{"name": "a", "address": "h:1", "encodings": ["png"]}]}, "unknown"),
        (
            {"broker": {"unknown_terminal": "lottery"}, "local_desktop": [{"name": "x"}]},
            "unknown_terminal",
        ),
        (
            {"broker": {"pools": {"p": ["ghost"]}}, "local_desktop": [{"name": "x"}]},
            "unknown desktops",
        ),
        ({"discovery": {"enabled": "yes"}, "local_desktop": [{"name": "x"}]}, "true or false"),
        ({"local_desktop": [{"name": "x", "geometry": "big"}]}, "WIDTHxHEIGHT"),
        ({"local_desktop": [{"name": "x"}, {"name": "x"}]}, "names must differ"),
        ({"server": {"listen": 5900}, "local_desktop": [{"name": "x"}]}, "listen: give a list"),
        ({}, "no desktops"),
    ],
)
def test_config_errors_say_what_to_change(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_web_terminal_settings_are_read_from_the_file() -> None:
    config = from_dict(
        {
            "server": {"web_listen": ["tcp:9999"], "web_allowed_origins": ["https://a.example"]},
            "local_desktop": [{"name": "x"}],
        }
    )
    assert config.web_listen == ("tcp:9999",)
    assert config.web_allowed_origins == ("https://a.example",)
    assert (
        from_dict({"server": {"web_listen": []}, "local_desktop": [{"name": "x"}]}).web_listen == ()
    )


def test_unix_addresses_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        address_to_endpoint("unix:relative.sock")


def test_the_packaged_configuration_loads() -> None:
    from pathlib import Path

    from thinserve.config import load

    config = load(Path(__file__).parents[2] / "packaging" / "thinserve.toml")
    assert config.listen == ("tcp:port=5900",)
    assert config.broker.unknown_terminal == "pairing"
    assert [d.name for d in config.local_desktops] == ["desktop-1"]


def test_screen_text_always_fits_the_screen() -> None:
    text = ScreenText("A title", ("a line too long for this screen " * 3,), highlight="K7D-Q2M")
    fb = render(text, 640, 480)
    background = fb[0, 0]
    # Nothing is drawn in the outermost columns: every line was shrunk to fit.
    assert (fb[:, :3] == background).all() and (fb[:, -3:] == background).all()
