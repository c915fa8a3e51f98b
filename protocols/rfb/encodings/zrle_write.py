"""ZRLE tile data written from an :class:`~.zrle_tiles.Analysis`, a subencoding at a time.

Every tile is a head (subencoding byte, then its solid colour or palette)
and a body (raw CPIXELs, run records or packed rows).  All heads are
written into one buffer at once, and the bodies of each subencoding into
one buffer each, for all the tiles that chose it together; a tile's body is
a slice of those.  The tiles are then joined in wire order: that join is
the only loop over tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..pixelformat import PixelCodec
from .zrle_tiles import (
    MAX_PACKED,
    PLAIN_RLE,
    RAW,
    RLE_FLAG,
    SOLID,
    Analysis,
    analyse,
    index_bits_of,
)


def cpixels(words: np.ndarray, codec: PixelCodec) -> np.ndarray:
    """CPIXELs of wire values, one row of bytes each."""
    packed = np.frombuffer(codec.pack_cpixel_words(words), dtype=np.uint8)
    return packed.reshape(-1, codec.zrle_cpixel_bytes)


def run_records(heads: np.ndarray, lengths: np.ndarray, all_counted: bool) -> np.ndarray:
    """Run records: each run's head, then its length (all runs, or runs longer than one).

    ``heads`` has one item per run, of the head's size (a CPIXEL as a void
    item, or an index byte).  A length is ``length - 1`` as 255-bytes and a
    final byte below 255.  Records are laid out with room for one length
    byte each, the unused bytes dropped, then the 255-bytes of runs longer
    than 255 put in front of their last byte: most runs are short, so both
    steps are cheap.
    """
    size = heads.dtype.itemsize
    records = np.empty(lengths.size, dtype=[("head", heads.dtype), ("length", np.uint8)])
    records["head"] = heads
    records["length"] = lengths - 1  # wraps for runs longer than 256, set below
    out = records.view(np.uint8)
    dropped = np.empty(0, dtype=np.intp)
    if not all_counted:
        single = lengths == 1
        keep = np.ones((lengths.size, size + 1), dtype=bool)
        keep[:, size] = ~single
        out = out[keep.reshape(-1)]
        dropped = single.nonzero()[0]
    longer = (lengths > 255).nonzero()[0]
    if not longer.size:
        return out
    final = longer * (size + 1) + size - np.searchsorted(dropped, longer)
    past = lengths[longer] - 1
    out[final] = past % 255
    grown: np.ndarray = np.insert(out, np.repeat(final, past // 255), 255)
    return grown


def plain_rle(a: Analysis, runs: np.ndarray, codec: PixelCodec) -> np.ndarray:
    """Plain RLE records of ``runs``: a CPIXEL and the length of each."""
    packed = codec.pack_cpixel_words(a.runs.value[runs])
    heads = np.frombuffer(packed, dtype=f"V{codec.zrle_cpixel_bytes}")
    return run_records(heads, a.runs.length[runs], True)


def palette_rle(a: Analysis, runs: np.ndarray) -> np.ndarray:
    """Palette RLE records of ``runs``: an index, with the top bit set and a length
    where the run is longer than one."""
    lengths = a.runs.length[runs]
    heads = (a.pal.index[runs] | ((lengths > 1) << 7)).astype(np.uint8)
    return run_records(heads, lengths, False)


def packed_rows(a: Analysis, runs: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """The packed-palette rows of ``tiles`` (positions in ``a.runs``) and their ``runs``.

    Every pixel's index is shifted to its place in its row's bytes and the
    bytes are summed: the fields of one byte never overlap.
    """
    g, r = a.g, a.runs
    grid_tiles = r.tiles[tiles]
    widths = g.widths[grid_tiles]
    bits = index_bits_of(a.pal.sizes[tiles])
    row_bytes = (widths * bits + 7) // 8
    body = g.heights[grid_tiles] * row_bytes
    body_at = body.cumsum() - body
    sizes = g.sizes[grid_tiles]
    index = a.pal.index[runs].repeat(r.length[runs])
    place = np.arange(index.size) - (sizes.cumsum() - sizes).repeat(sizes)
    y, x = np.divmod(place, widths.repeat(sizes))
    pixel_bits = bits.repeat(sizes)
    column = x * pixel_bits
    shift = 8 - pixel_bits - column % 8
    at = body_at.repeat(sizes) + y * row_bytes.repeat(sizes) + column // 8
    summed = np.bincount(at, weights=index << shift, minlength=int(body.sum()))
    rows: np.ndarray = summed.astype(np.uint8)
    return rows


def heads(a: Analysis, with_palette: np.ndarray, codec: PixelCodec) -> tuple[bytes, np.ndarray]:
    """Every tile's head, and where each starts (one more: the end).

    ``with_palette`` marks the tiles of ``a.runs`` that send their palette.
    """
    g, r, sub = a.g, a.runs, a.choice.sub
    cpixel = codec.zrle_cpixel_bytes
    solid = (sub == SOLID).nonzero()[0]
    table = np.where(with_palette, a.pal.sizes, 0)
    length = np.ones(g.count, dtype=np.intp)
    length[solid] += cpixel
    length[r.tiles] += table * cpixel
    at = np.zeros(g.count + 1, dtype=np.intp)
    length.cumsum(out=at[1:])
    out = np.empty(int(at[-1]), dtype=np.uint8)
    out[at[:-1]] = sub
    span = np.arange(cpixel)
    if solid.size:
        out[(at[solid] + 1)[:, None] + span] = cpixels(a.words[g.starts[solid]], codec)
    if with_palette.any():
        entries = a.pal.entries[with_palette.repeat(a.pal.sizes)]
        entry_at = (at[r.tiles] + 1).repeat(table) + cpixel * a.pal.index[entries]
        out[entry_at[:, None] + span] = cpixels(r.value[entries], codec)
    return out.tobytes(), at


@dataclass(frozen=True)
class Written:
    """All tiles' heads and bodies, with where each tile's starts and ends."""

    heads: bytes
    head_at: np.ndarray  # one more than tiles: the end
    bodies: bytes
    body_at: np.ndarray
    body_end: np.ndarray


def write(a: Analysis, codec: PixelCodec) -> Written:
    """All tiles' bytes, subencoding by subencoding."""
    g, r, sub = a.g, a.runs, a.choice.sub
    run_sub = sub[r.tiles]
    plain = run_sub == PLAIN_RLE
    rle = run_sub > RLE_FLAG
    packed = (run_sub >= 2) & (run_sub <= MAX_PACKED)
    head, head_at = heads(a, rle | packed, codec)
    raw = sub == RAW
    # Bodies one subencoding after another: raw, plain RLE, palette RLE, packed.
    kind = np.full(g.count, 4, dtype=np.int8)  # solid tiles: no body
    kind[raw] = 0
    parts = [b""] * 4
    if raw.any():
        parts[0] = codec.pack_cpixel_words(a.words if raw.all() else a.words[raw.repeat(g.sizes)])
    if plain.any():
        kind[r.tiles[plain]] = 1
        parts[1] = plain_rle(a, r.of(plain), codec).tobytes()
    if rle.any():
        kind[r.tiles[rle]] = 2
        parts[2] = palette_rle(a, r.of(rle)).tobytes()
    if packed.any():
        kind[r.tiles[packed]] = 3
        parts[3] = packed_rows(a, r.of(packed), packed.nonzero()[0]).tobytes()
    length = a.choice.size - np.diff(head_at) + 1
    order = kind.argsort(kind="stable")
    ends = length[order].cumsum()
    body_at = np.empty(g.count, dtype=np.intp)
    body_at[order] = ends - length[order]
    present = [part for part in parts if part]
    bodies = present[0] if len(present) == 1 else b"".join(present)
    return Written(head, head_at, bodies, body_at, body_at + length)


def tile_bytes(pixels: np.ndarray, codec: PixelCodec) -> tuple[bytes, int]:
    """A rectangle's tile data, and how many of its bytes are raw tiles."""
    if pixels.size == 0:
        return b"", 0
    a = analyse(pixels, codec)
    w = write(a, codec)
    head, body = memoryview(w.heads), memoryview(w.bodies)
    head_at = w.head_at.tolist()
    spans = zip(head_at[:-1], head_at[1:], w.body_at.tolist(), w.body_end.tolist(), strict=True)
    data = b"".join([part for h0, h1, b0, b1 in spans for part in (head[h0:h1], body[b0:b1])])
    raw = a.choice.sub == RAW
    return data, int((a.choice.size[raw] + 1).sum())


def tile_alternatives(pixels: np.ndarray, codec: PixelCodec) -> list[list[bytes]]:
    """Per tile, in wire order: its bytes as chosen, and raw when that is another form."""
    if pixels.size == 0:
        return []
    a = analyse(pixels, codec)
    w = write(a, codec)
    raw = memoryview(codec.pack_cpixel_words(a.words))
    cpixel = codec.zrle_cpixel_bytes
    head_at = w.head_at.tolist()
    spans = zip(
        head_at[:-1],
        head_at[1:],
        w.body_at.tolist(),
        w.body_end.tolist(),
        (a.g.starts * cpixel).tolist(),
        (a.g.ends * cpixel).tolist(),
        a.choice.sub.tolist(),
        strict=True,
    )
    tiles = []
    for h0, h1, b0, b1, r0, r1, sub in spans:
        chosen = w.heads[h0:h1] + w.bodies[b0:b1]
        tiles.append([chosen] if sub in (SOLID, RAW) else [chosen, bytes([RAW]) + raw[r0:r1]])
    return tiles
