"""Character-level obfuscation: leetspeak, homoglyphs and invisible characters."""

from __future__ import annotations

import random
import re
import unicodedata

from charter.transforms.base import TRANSFORMS, Transform

# --------------------------------------------------------------------------- leetspeak

LEET: dict[str, tuple[str, ...]] = {
    "a": ("4", "@"), "b": ("8",), "e": ("3",), "g": ("9",), "i": ("1", "!"),
    "o": ("0",), "s": ("5", "$"), "t": ("7", "+"),
}  # fmt: skip
LEET_FOLD = {sym: letter for letter, syms in LEET.items() for sym in syms}
_LEET_TOKEN = re.compile(r"[A-Za-z0-9@$!+]+")
_WORD = re.compile(r"[A-Za-z]+")
#: a letter next to a leet symbol, inside one token: the cheap detector normalisation uses
LEET_HINT = re.compile(r"[A-Za-z][0134579@$+][A-Za-z0-9@$+]|[0134579@$][A-Za-z]{2}")


_LEET_TABLE = str.maketrans(LEET_FOLD)
_LETTER = re.compile("[A-Za-z]")


def _fold_token(m: re.Match[str]) -> str:
    tok = m.group(0)
    if tok.isalpha() or not _LETTER.search(tok):  # plain words; plain numbers stay numbers
        return tok.lower()
    if tok[-1] == "!":  # a trailing "!" is punctuation
        return tok[:-1].translate(_LEET_TABLE).lower() + "!"
    return tok.translate(_LEET_TABLE).lower()


def fold_leet(text: str) -> str:
    """Heuristic inverse of leetspeak: lowercase, fold digits/symbols inside words to letters."""
    return _LEET_TOKEN.sub(_fold_token, text)


@TRANSFORMS.register()
class Leetspeak(Transform):
    """Every word keeps at least one plain letter so that decode can tell words from numbers.

    Lossy decode: the result is lowercase, and digits or @$!+ inside words are folded too.
    """

    name = "leetspeak"
    family = "leetspeak"
    description = "Replace letters with lookalike digits/symbols (a->4, e->3, o->0, s->5, ...)."
    reversible = True

    def __init__(self, rate: float = 0.7) -> None:
        self.rate = rate

    def _word(self, w: str, rng: random.Random) -> str:
        if len(w) < 2:
            return w
        chars = list(w)
        idx = [i for i, c in enumerate(chars) if c.lower() in LEET and rng.random() < self.rate]
        if len(idx) == len(chars):
            idx.pop(rng.randrange(len(idx)))
        for i in idx:
            opts = LEET[chars[i].lower()]
            if i == len(chars) - 1:  # a word-final "!" would read as punctuation
                opts = tuple(o for o in opts if o != "!")
            chars[i] = rng.choice(opts)
        return "".join(chars)

    def apply(self, text: str, rng: random.Random) -> str:
        return _WORD.sub(lambda m: self._word(m.group(0), rng), text)

    def decode(self, text: str) -> str | None:
        return fold_leet(text) if text else None


# --------------------------------------------------------------------------- homoglyphs

CONFUSABLES: dict[str, str] = {
    "a": "\u0430\u03b1", "c": "\u0441", "d": "\u0501", "e": "\u0435", "g": "\u0261",
    "h": "\u04bb", "i": "\u0456\u03b9", "j": "\u0458", "k": "\u03ba", "l": "\u04cf",
    "o": "\u043e\u03bf", "p": "\u0440\u03c1", "q": "\u051b", "s": "\u0455", "u": "\u03c5",
    "v": "\u03bd", "w": "\u051d", "x": "\u0445\u03c7", "y": "\u0443",
    "A": "\u0410\u0391", "B": "\u0412\u0392", "C": "\u0421", "E": "\u0415\u0395",
    "H": "\u041d\u0397", "I": "\u0406\u0399", "J": "\u0408", "K": "\u041a\u039a",
    "M": "\u041c\u039c", "N": "\u039d", "O": "\u041e\u039f", "P": "\u0420\u03a1",
    "S": "\u0405", "T": "\u0422\u03a4", "X": "\u0425\u03a7", "Y": "\u04ae\u03a5", "Z": "\u0396",
}  # fmt: skip
#: folded too, but never produced by apply (NFKC turns U+03F2 into a final sigma)
_FOLD_ONLY = {"\u03f2": "c", "\u03c2": "c", "\u0501": "d", "\u0391": "A", "\u0251": "a"}
CONFUSABLE_FOLD = str.maketrans({**_FOLD_ONLY, **{g: a for a, gs in CONFUSABLES.items() for g in gs}})
CONFUSABLE_CHARS = frozenset(map(chr, CONFUSABLE_FOLD))


def fullwidth(c: str) -> str:
    o = ord(c)
    return chr(o + 0xFEE0) if 0x21 <= o <= 0x7E else ("\u3000" if c == " " else c)


def fold_confusables(text: str) -> str:
    """NFKC (folds fullwidth and compatibility forms) then map Cyrillic/Greek lookalikes to ASCII."""
    return unicodedata.normalize("NFKC", text).translate(CONFUSABLE_FOLD)


@TRANSFORMS.register()
class Confusables(Transform):
    """Exact decode for ASCII input; non-ASCII input may be altered by NFKC."""

    name = "confusables"
    family = "homoglyph"
    description = "Swap letters for Cyrillic/Greek lookalikes or fullwidth forms."
    reversible = True

    def __init__(self, rate: float = 0.5) -> None:
        self.rate = rate

    def apply(self, text: str, rng: random.Random) -> str:
        out = []
        for c in text:
            if c.isascii() and c.isalpha() and rng.random() < self.rate:
                opts = CONFUSABLES.get(c, "")
                out.append(rng.choice(opts) if opts and rng.random() < 0.8 else fullwidth(c))
            else:
                out.append(c)
        return "".join(out)

    def decode(self, text: str) -> str | None:
        if text.isascii():
            return None
        return fold_confusables(text)


@TRANSFORMS.register()
class Fullwidth(Transform):
    name = "fullwidth"
    family = "homoglyph"
    description = "Render ASCII in Unicode fullwidth forms (ｈｏｗ ｔｏ)."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return "".join(map(fullwidth, text))

    def decode(self, text: str) -> str | None:
        if text.isascii():
            return None
        return unicodedata.normalize("NFKC", text)


# --------------------------------------------------------------------------- invisible

ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\u00ad")
#: everything stripped by normalisation: zero-width, bidi marks, invisible operators, BOM, tags
INVISIBLE_RE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
    "\u206a-\u206f\ufeff\U000e0000-\U000e007f]"
)
_ZW_RE = re.compile("[" + "".join(ZERO_WIDTH) + "\ufeff]")
TAG_RE = re.compile("[\U000e0000-\U000e007f]")
TAG_BEGIN, TAG_END = "\U000e0001", "\U000e007f"
#: tag character -> the ASCII character it carries; the begin and end tags are dropped
_TAG_TABLE: dict[int, int | None] = {o: o - 0xE0000 for o in range(0xE0000, 0xE0080)}
_TAG_TABLE.update({ord(TAG_BEGIN): None, ord(TAG_END): None})


@TRANSFORMS.register()
class ZeroWidth(Transform):
    name = "zero_width"
    family = "invisible"
    description = "Insert zero-width spaces/joiners, word joiners or soft hyphens between characters."
    reversible = True

    def __init__(self, rate: float = 0.6) -> None:
        self.rate = rate

    def apply(self, text: str, rng: random.Random) -> str:
        out = []
        for i, c in enumerate(text):
            out.append(c)
            if i + 1 < len(text) and rng.random() < self.rate:
                out.append(rng.choice(ZERO_WIDTH))
        return "".join(out)

    def decode(self, text: str) -> str | None:
        return _ZW_RE.sub("", text) if _ZW_RE.search(text) else None


_COVERS = (
    "Thanks for your help today!",
    "Could you summarise this for me?",
    "Hello there, hope you are well.",
    "Please read the note below.",
    "What a lovely day it is.",
    "Quick question about my account.",
    "",
)


def decode_tags(text: str) -> str | None:
    """The hidden payload carried by Unicode tag characters (non-tag characters in it kept)."""
    start = text.find(TAG_BEGIN)
    if start < 0:
        m = TAG_RE.search(text)
        if not m:
            return None
        start = m.start()
    return text[start:].translate(_TAG_TABLE)


@TRANSFORMS.register()
class TagSmuggling(Transform):
    """ASCII characters ride as invisible U+E00xx tags after an innocuous visible sentence;
    non-ASCII payload characters (no tag form) stay visible."""

    name = "tag_smuggling"
    family = "invisible"
    description = "Hide the text in Unicode tag characters after an innocuous visible sentence."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        hidden = "".join(chr(0xE0000 + ord(c)) if ord(c) < 0x80 else c for c in text)
        return rng.choice(_COVERS) + TAG_BEGIN + hidden + TAG_END

    def decode(self, text: str) -> str | None:
        return decode_tags(text)
