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


# --------------------------------------------------------------------------- attack-only encodings
# The encodings of garak-style "decode this and answer" probes. The data engine does not draw them
# (``augments = False``): normalisation decodes each exactly, so training on them would teach nothing,
# and the default training data stay as they were.

_B32_RUN = re.compile(r"(?<![A-Za-z0-9=])[A-Z2-7]{16,}={0,6}(?![A-Za-z0-9=])")
_A85_TOKEN = re.compile(r"<~[!-uz\s]{5,}~>|(?<!\S)[!-uz]{16,}(?!\S)")
_QP = re.compile(r"=[0-9A-F]{2}")
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2})")
#: a run of four or more numbers (character codes), separated by spaces, commas or semicolons
_CODES = re.compile(r"(?<![\w.])\d{1,8}(?:[ \t,;]+\d{1,8}){3,}(?![\w.])")


def decode_base32(text: str) -> str | None:
    s = "".join(text.split()).upper()
    bare = s.rstrip("=")
    if len(bare) < 8 or not re.fullmatch(r"[A-Z2-7]+", bare) or len(bare) % 8 in (1, 3, 6):
        return None
    try:
        raw = base64.b32decode(bare + "=" * (-len(bare) % 8))
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def decode_ascii85(text: str) -> str | None:
    s = text.strip()
    try:
        raw = base64.a85decode(s, adobe=s.startswith("<~") and s.endswith("~>"), ignorechars=" \t\n\r\v")
    except (binascii.Error, ValueError):
        return None
    return _printable(raw)


def decode_quoted_printable(text: str) -> str | None:
    if len(_QP.findall(text)) < 3:
        return None
    import quopri

    return _printable(quopri.decodestring(utf8(text)))


def decode_entities(text: str) -> str | None:
    if len(_ENTITY.findall(text)) < 3:
        return None
    import html

    out = html.unescape(text)
    return out if out != text and printable_ratio(out) >= 0.9 else None


def decode_escapes(text: str) -> str | None:
    """``\\u0068``, ``\\U00000068`` and ``\\x68`` escapes (JSON, Python, C strings) as the characters they
    name; ``\\x`` runs that spell UTF-8 bytes (``\\xc3\\xa9``) as those characters."""
    if len(_ESCAPE.findall(text)) < 3:
        return None

    def char(m: re.Match[str]) -> str:
        n = int(m.group()[2:], 16)
        return chr(n) if n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else "\ufffd"

    out = _ESCAPE.sub(char, text)
    try:  # latin-1 code points that spell UTF-8 are those bytes
        out = out.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    return out if printable_ratio(out) >= 0.9 else None


def _codes_text(nums: list[str]) -> str | None:
    """Character codes in base 2, 8 or 10 (binary if every code is seven or eight 0/1 digits), as
    text; None unless every code is a printable character or a line break."""
    bases = [2] if all(len(n) in (7, 8) and set(n) <= {"0", "1"} for n in nums) else [10, 8]
    best: tuple[float, str] | None = None
    for base in bases:
        try:
            chars = [chr(int(n, base)) for n in nums]
        except (ValueError, OverflowError):
            continue
        if not all(c.isprintable() or c in "\n\t\r" for c in chars):
            continue
        out = "".join(chars)
        r = sum(c.isalpha() or c == " " for c in out) / len(out)
        if r >= 0.7 and (best is None or r > best[0]):
            best = (r, out)
    return best[1] if best else None


def decode_codes(text: str) -> str | None:
    """Every run of four or more character codes (``104 111 119``, ``01101000 01101111``, ``150,157``)
    decoded in place."""
    changed, tries = False, 0

    def sub(m: re.Match[str]) -> str:
        nonlocal changed, tries
        tries += 1
        d = _codes_text(re.split(r"[ \t,;]+", m.group())) if tries <= MAX_TRIES else None
        if d is None:
            return m.group()
        changed = True
        return d

    out = _CODES.sub(sub, text)
    return out if changed else None


_DIGIT_SEP = re.compile(r"\d[ \t,;]+\d")


def codes_hint(text: str) -> bool:
    return _DIGIT_SEP.search(text) is not None and _CODES.search(text) is not None


#: runs or tokens a text may have decoded by each of the rarer decoders: bounded work for a text of
#: thousands of candidate tokens, and more than any request holds
MAX_TRIES = 64


def sub_base32(text: str) -> str | None:
    """The whole text, or each long base32 run in it, decoded."""
    whole = decode_base32(text) if not text.strip().count(" ") else None
    if whole is not None:
        return whole
    changed, tries = False, 0

    def sub(m: re.Match[str]) -> str:
        nonlocal changed, tries
        tries += 1
        d = decode_base32(m.group()) if tries <= MAX_TRIES else None
        changed |= d is not None
        return m.group() if d is None else d

    out = _B32_RUN.sub(sub, text)
    return out if changed else None


def sub_ascii85(text: str) -> str | None:
    """Each ``<~…~>`` block, or each long token of ascii85 characters that decodes to English-like text."""
    from charter.transforms._text import english_ratio

    changed, tries = False, 0

    def sub(m: re.Match[str]) -> str:
        nonlocal changed, tries
        tok = m.group()
        tries += 1
        # a long plain word or a base64 run also fits the character set: keep only text decodings that read
        d = decode_ascii85(tok) if tries <= MAX_TRIES else None
        if d is None or (not tok.startswith("<~") and english_ratio(d) < 0.3):
            return tok
        changed = True
        return d

    out = _A85_TOKEN.sub(sub, text)
    return out if changed else None


@TRANSFORMS.register()
class Base32(Transform):
    name = "base32"
    family = "encoding"
    description = "Base32 of the UTF-8 bytes."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        return base64.b32encode(utf8(text)).decode("ascii")

    def decode(self, text: str) -> str | None:
        return decode_base32(text)


@TRANSFORMS.register()
class Ascii85(Transform):
    name = "ascii85"
    family = "encoding"
    description = "Ascii85 (base85) of the UTF-8 bytes, in <~ ~> as Adobe writes it or bare."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        return base64.a85encode(utf8(text), adobe=rng.random() < 0.5).decode("ascii")

    def decode(self, text: str) -> str | None:
        return decode_ascii85(text)


@TRANSFORMS.register()
class QuotedPrintable(Transform):
    name = "quoted_printable"
    family = "encoding"
    description = "Every byte as quoted-printable =XX (MIME's encoding, forced for every character)."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        return "".join(f"={b:02X}" for b in utf8(text))

    def decode(self, text: str) -> str | None:
        return decode_quoted_printable(text)


@TRANSFORMS.register()
class CharCodes(Transform):
    name = "char_codes"
    family = "encoding"
    description = "Each character as its code: binary, decimal or octal, separated by spaces or commas."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        fmt = rng.choice(["{:08b}", "{:d}", "{:o}"])
        sep = rng.choice([" ", ", ", ","]) if fmt != "{:08b}" else " "
        return sep.join(fmt.format(ord(c)) for c in text)

    def decode(self, text: str) -> str | None:
        return decode_codes(text)


@TRANSFORMS.register()
class HtmlEntities(Transform):
    name = "html_entities"
    family = "encoding"
    description = "Every character as an HTML numeric entity (&#104; or &#x68;)."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        fmt = rng.choice(["&#{};", "&#x{:x};"])
        return "".join(fmt.format(ord(c)) for c in text)

    def decode(self, text: str) -> str | None:
        return decode_entities(text)


@TRANSFORMS.register()
class UnicodeEscapes(Transform):
    name = "unicode_escapes"
    family = "encoding"
    description = "Every character as a \\uXXXX or \\xXX escape, as JSON and Python strings write them."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in text)
        return "".join(f"\\x{b:02x}" for b in utf8(text))

    def decode(self, text: str) -> str | None:
        return decode_escapes(text)
