"""Rectangle encodings, one module each, every one with encoder and decoder."""

from __future__ import annotations

from .base import (
    CopyFrom,
    Decoder,
    Encoder,
    Rect,
    StatelessEncoder,
    run_decoder,
)
from .copyrect import CopyRectDecoder, CopyRectEncoder
from .hextile import HextileDecoder, HextileEncoder
from .raw import RawDecoder, RawEncoder
from .rre import RREDecoder, RREEncoder
from .tight import TightDecoder, TightEncoder
from .zlibenc import ZlibDecoder, ZlibEncoder
from .zrle import ZRLEDecoder, ZRLEEncoder

_ENCODERS: dict[int, type[Encoder]] = {
    cls.encoding: cls
    for cls in (
        RawEncoder,
        CopyRectEncoder,
        RREEncoder,
        HextileEncoder,
        ZlibEncoder,
        TightEncoder,
        ZRLEEncoder,
    )
}
_DECODERS: dict[int, type[Decoder]] = {
    cls.encoding: cls
    for cls in (
        RawDecoder,
        CopyRectDecoder,
        RREDecoder,
        HextileDecoder,
        ZlibDecoder,
        TightDecoder,
        ZRLEDecoder,
    )
}

RECT_ENCODINGS: tuple[int, ...] = tuple(_ENCODERS)


def make_encoder(encoding: int) -> Encoder:
    """A fresh (per connection) encoder for a rectangle encoding."""
    return _ENCODERS[encoding]()


def make_decoder(encoding: int) -> Decoder:
    """A fresh (per connection) decoder for a rectangle encoding."""
    return _DECODERS[encoding]()


__all__ = [
    "RECT_ENCODINGS",
    "CopyFrom",
    "CopyRectEncoder",
    "Decoder",
    "Encoder",
    "Rect",
    "StatelessEncoder",
    "make_decoder",
    "make_encoder",
    "run_decoder",
]
