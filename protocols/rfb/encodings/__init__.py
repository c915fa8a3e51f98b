"""Rectangle encodings, one module each, every one with encoder and decoder."""

from __future__ import annotations

import importlib

from ..constants import Encoding
from .base import CopyFrom, Decoder, Encoder, Rect, run_decoder

# encoding -> (module, encoder class, decoder class)
_REGISTRY: dict[int, tuple[str, str, str]] = {
    Encoding.RAW: ("raw", "RawEncoder", "RawDecoder"),
    Encoding.COPYRECT: ("copyrect", "CopyRectEncoder", "CopyRectDecoder"),
    Encoding.RRE: ("rre", "RREEncoder", "RREDecoder"),
    Encoding.HEXTILE: ("hextile", "HextileEncoder", "HextileDecoder"),
    Encoding.ZLIB: ("zlibenc", "ZlibEncoder", "ZlibDecoder"),
    Encoding.TIGHT: ("tight", "TightEncoder", "TightDecoder"),
    Encoding.ZRLE: ("zrle", "ZRLEEncoder", "ZRLEDecoder"),
}

RECT_ENCODINGS: tuple[int, ...] = tuple(_REGISTRY)


def _load(encoding: int, index: int) -> type:
    module_name, *classes = _REGISTRY[encoding]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, classes[index])


def make_encoder(encoding: int) -> Encoder:
    """A fresh (per connection) encoder for a rectangle encoding."""
    return _load(encoding, 0)()


def make_decoder(encoding: int) -> Decoder:
    """A fresh (per connection) decoder for a rectangle encoding."""
    return _load(encoding, 1)()


__all__ = [
    "RECT_ENCODINGS",
    "CopyFrom",
    "Decoder",
    "Encoder",
    "Rect",
    "make_decoder",
    "make_encoder",
    "run_decoder",
]
