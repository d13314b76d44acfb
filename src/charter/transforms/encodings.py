"""Byte encodings: base64, hex, percent-encoding. Decoders accept only well-formed input that
decodes to mostly printable UTF-8."""

from __future__ import annotations

import base64
import binascii
import random
import re
from urllib.parse import quote, unquote

from charter.transforms._text import printable_ratio
from charter.transforms.base import TRANSFORMS, Transform

_B64_CHARS = re.compile(r"[A-Za-z0-9+/_\-]+={0,2}")
_HEX_SEP = re.compile(r"(?:0x|\\x|[\s:])", re.IGNORECASE)
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_PCT = re.compile(r"%[0-9A-Fa-f]{2}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate (no UTF-8 form) becomes U+FFFD, not an error."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _printable(raw: bytes) -> str | None:
    try:
        out = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return out if out and printable_ratio(out) >= 0.9 else None


def decode_base64(text: str) -> str | None:
    s = "".join(text.split())
    if len(s) < 4 or not _B64_CHARS.fullmatch(s):
        return None
    s = s.replace("-", "+").replace("_", "/").rstrip("=")
    if len(s) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def decode_hex(text: str) -> str | None:
    s = _HEX_SEP.sub("", text)
    if len(s) < 4 or not _HEX.fullmatch(s):
        return None
    return _printable(bytes.fromhex(s))


def decode_url(text: str) -> str | None:
    if len(_PCT.findall(text)) < 2:
        return None
    try:
        out = unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None
    return out if printable_ratio(out) >= 0.9 else None


@TRANSFORMS.register()
class Base64(Transform):
    name = "base64"
    family = "encoding"
    description = "Base64 of the UTF-8 bytes."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return base64.b64encode(utf8(text)).decode("ascii")

    def decode(self, text: str) -> str | None:
        return decode_base64(text)


@TRANSFORMS.register()
class Hex(Transform):
    name = "hex"
    family = "encoding"
    description = "Lowercase hex of the UTF-8 bytes."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return utf8(text).hex()

    def decode(self, text: str) -> str | None:
        return decode_hex(text)


@TRANSFORMS.register()
class Url(Transform):
    name = "url"
    family = "encoding"
    description = "Percent-encoding of every non-alphanumeric character."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return quote(utf8(text), safe="")

    def decode(self, text: str) -> str | None:
        if not _PCT.search(text):  # e.g. a single alphanumeric word encodes to itself
            return text if text and quote(utf8(text), safe="") == text else None
        try:
            return unquote(text, errors="strict")
        except UnicodeDecodeError:
            return None
