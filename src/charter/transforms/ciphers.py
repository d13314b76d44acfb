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


#: word pairs English writes in this order and almost never the other way round
_ENGLISH_PAIRS = frozenset(
    tuple(p.split("_")) for p in """
    of_the in_the to_the on_the for_the and_the with_the at_the by_the from_the into_the is_the
    is_a of_a in_a to_a for_a with_a as_a on_a i_want i_need want_to need_to how_to how_do how_can
    how_would how_much how_many help_me tell_me give_me show_me me_how me_a me_the write_a create_a
    make_a make_the get_a get_the explain_how explain_the step_by by_step so_that that_the what_the
    to_make to_get to_do to_be to_find to_keep to_use to_write to_see to_learn be_a a_lot lot_of one_of some_of
    the_best best_way way_to a_new
    all_the out_of i_don't don't_want don't_know i'm_a i'm_not it's_a it's_not my_own if_you if_i
    when_i when_you
    """.split()
)  # not pairs questions invert ("you can" / "can you", "it is" / "is it")
_DETERMINERS = frozenset("the a an my your their our".split())
#: words a determiner never stands before
_FUNCTION_WORDS = frozenset("the a an my your their our to of in on at for with by from and or so how what why when "
                            "i you he she we they it is are was were do does can could would should if that me".split())
#: pairs that read backwards: an English pair reversed, or a determiner before a word it never precedes
#: (reversed, a determiner follows its noun and meets the word before the phrase: "council the so")
_BACKWARD = frozenset({(b, a) for a, b in _ENGLISH_PAIRS} | {(d, w) for d in _DETERMINERS for w in _FUNCTION_WORDS})
_PAIR_WORD = re.compile(r"[a-z']+")


def _looks_reversed(words: list[str]) -> bool:
    """Whether a line's words read last word first: of its common English word pairs ("how to", "of
    the"), at least two read backwards ("to how", "the of") and at least twice as many as read forwards;
    or one does, none reads forwards, and the line opens on a sentence's end and closes on a capitalised
    word ("version. full the me Give")."""
    low = [m.group(0) if (m := _PAIR_WORD.search(w.lower())) else "" for w in words]
    if sum(len(w) > 1 for w in low) < 0.7 * len(low):  # letters split by separators or noise: no words to pair
        return False
    pairs = list(zip(low, low[1:]))
    fwd = sum(p in _ENGLISH_PAIRS for p in pairs)
    back = sum(p in _BACKWARD for p in pairs)
    if back >= 2 and back >= 2 * fwd + 1:
        return True
    # one backward pair is enough when the line also opens on a stop and closes on a capital
    first, last = words[0], words[-1]
    return back == 1 and fwd == 0 and first[-1] in ".?" and last.isalpha() and last[0].isupper()


def unreverse_lines(text: str) -> str | None:
    """``text`` with each line that reads last word first (:func:`_looks_reversed`) put back in order, the
    rest as written: a reversed ask inside an e-mail or a document is one line of it. None if no line
    looks reversed. English with its words reversed keeps its common words, so the cipher checks, which
    try only text that does not read as English, never see it."""
    low = _PAIR_WORD.findall(text[:20000].lower())
    if _BACKWARD.isdisjoint(zip(low, low[1:])):
        return None  # no word pair reads backwards: the check every text takes
    lines = text.split("\n")
    changed = False
    for i, line in enumerate(lines):
        words = line.split(" ")
        if len(kept := [w for w in words if w]) >= 4 and _looks_reversed(kept):
            lines[i] = " ".join(words[::-1])
            changed = True
    return "\n".join(lines) if changed else None


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
