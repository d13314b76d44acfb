"""Classical ciphers and reversals. Involutions (rot13, atbash, reverse) always decode; whether
the result is better than the input is for the caller (normalisation gates on English-likeness)."""

from __future__ import annotations

import random
import re
import string

from charter.transforms.base import TRANSFORMS, Transform

_LO, _UP = string.ascii_lowercase, string.ascii_uppercase


def caesar_table(shift: int) -> dict[int, int]:
    shift %= 26
    return str.maketrans(_LO + _UP, _LO[shift:] + _LO[:shift] + _UP[shift:] + _UP[:shift])


def caesar(text: str, shift: int) -> str:
    return text.translate(caesar_table(shift))


ATBASH = str.maketrans(_LO + _UP, _LO[::-1] + _UP[::-1])


@TRANSFORMS.register()
class Rot13(Transform):
    name = "rot13"
    family = "cipher"
    description = "Rotate letters by 13 (its own inverse)."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return caesar(text, 13)

    def decode(self, text: str) -> str | None:
        return caesar(text, 13)


@TRANSFORMS.register()
class Caesar3(Transform):
    name = "caesar3"
    family = "cipher"
    description = "Caesar cipher with the classic fixed shift of 3."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return caesar(text, 3)

    def decode(self, text: str) -> str | None:
        return caesar(text, -3)


_CAESAR_HEADERS = (
    "Caesar cipher, shift {n}:\n",
    "(every letter below is moved forward {n} places in the alphabet) ",
    "ROT{n}: ",
)
CAESAR_HEADER_RE = re.compile(
    r"^(?:Caesar cipher, shift (\d+):\n|\(every letter below is moved forward (\d+) places in the alphabet\) |ROT(\d+): )"
)


def header_shift(m: re.Match[str]) -> int:
    """The shift a :data:`CAESAR_HEADER_RE` match states, mod 26 (digit by digit: ``int()`` of a
    header with thousands of digits raises)."""
    n = 0
    for d in next(g for g in m.groups() if g):
        n = (n * 10 + int(d)) % 26
    return n


@TRANSFORMS.register()
class Caesar(Transform):
    name = "caesar"
    family = "cipher"
    description = "Caesar cipher with a random shift (1-25) stated in a short header."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        n = rng.randint(1, 25)
        return rng.choice(_CAESAR_HEADERS).format(n=n) + caesar(text, n)

    def decode(self, text: str) -> str | None:
        m = CAESAR_HEADER_RE.match(text)
        if not m:
            return None
        return caesar(text[m.end() :], -header_shift(m))


@TRANSFORMS.register()
class CaesarRandom(Transform):
    """Not reversible: the shift is not recorded (normalisation brute-forces it)."""

    name = "caesar_random"
    family = "cipher"
    description = "Caesar cipher with an unstated random shift (1-25)."

    def apply(self, text: str, rng: random.Random) -> str:
        return caesar(text, rng.randint(1, 25))


@TRANSFORMS.register()
class Atbash(Transform):
    name = "atbash"
    family = "cipher"
    description = "Mirror the alphabet (a<->z, b<->y, ...); its own inverse."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return text.translate(ATBASH)

    def decode(self, text: str) -> str | None:
        return text.translate(ATBASH)


MORSE: dict[str, str] = {
    "a": ".-", "b": "-...", "c": "-.-.", "d": "-..", "e": ".", "f": "..-.", "g": "--.",
    "h": "....", "i": "..", "j": ".---", "k": "-.-", "l": ".-..", "m": "--", "n": "-.",
    "o": "---", "p": ".--.", "q": "--.-", "r": ".-.", "s": "...", "t": "-", "u": "..-",
    "v": "...-", "w": ".--", "x": "-..-", "y": "-.--", "z": "--..",
    "0": "-----", "1": ".----", "2": "..---", "3": "...--", "4": "....-", "5": ".....",
    "6": "-....", "7": "--...", "8": "---..", "9": "----.",
    ".": ".-.-.-", ",": "--..--", "?": "..--..", "'": ".----.", "!": "-.-.--", "/": "-..-.",
    "(": "-.--.", ")": "-.--.-", "&": ".-...", ":": "---...", ";": "-.-.-.", "=": "-...-",
    "+": ".-.-.", "-": "-....-", "_": "..--.-", '"': ".-..-.", "$": "...-..-", "@": ".--.-.",
}  # fmt: skip
MORSE_INV = {v: k for k, v in MORSE.items()}
_MORSE_LIKE = re.compile(r"[.\-/\s]+")


def decode_morse(text: str) -> str | None:
    s = text.strip()
    if len(s) < 3 or not _MORSE_LIKE.fullmatch(s) or not ("." in s or "-" in s):
        return None
    words = []
    for w in s.split("/"):
        codes = w.split()
        if codes:
            words.append("".join(MORSE_INV.get(c, "?") for c in codes))
    return " ".join(words)


@TRANSFORMS.register()
class Morse(Transform):
    """Lossy: case and whitespace layout are lost; characters without a code pass through."""

    name = "morse"
    family = "cipher"
    description = "International Morse code; letters space-separated, words separated by ' / '."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return " / ".join(" ".join(MORSE.get(c, c) for c in w.lower()) for w in text.split())

    def decode(self, text: str) -> str | None:
        s = text.strip()
        if not s or sum(c in ".-/ " for c in s) < 0.8 * len(s):
            return None
        words = [w.split() for w in s.split(" / ")]
        return " ".join("".join(MORSE_INV.get(c, c) for c in w) for w in words if w)


@TRANSFORMS.register()
class Reverse(Transform):
    name = "reverse"
    family = "cipher"
    description = "Reverse the characters."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return text[::-1]

    def decode(self, text: str) -> str | None:
        return text[::-1]


@TRANSFORMS.register()
class ReverseWords(Transform):
    name = "reverse_words"
    family = "cipher"
    description = "Reverse the order of the words."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return " ".join(text.split(" ")[::-1])

    def decode(self, text: str) -> str | None:
        return " ".join(text.split(" ")[::-1])
