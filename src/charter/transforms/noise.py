"""Spacing tricks (reversible) and Best-of-N style character noise (not reversible; ``unscramble``
undoes what a vocabulary can)."""

from __future__ import annotations

import json
import random
import re
from functools import lru_cache
from importlib import resources

from charter.transforms.base import TRANSFORMS, Transform

# --------------------------------------------------------------------------- spacing


@TRANSFORMS.register()
class CharSpacing(Transform):
    """Characters joined by one space, words by two. Decode is exact for text whose words are
    separated by single spaces and that has no one-letter words next to each other ("a b c" spaces
    out like one word, and is not decoded)."""

    name = "char_spacing"
    family = "spacing"
    description = "Space out characters: 'h o w  t o'."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        return "  ".join(" ".join(w) for w in text.split(" "))

    def decode(self, text: str) -> str | None:
        segs = text.split("  ")
        if not any(len(s) >= 3 for s in segs) or any(s[1::2].strip(" ") for s in segs):
            return None
        return " ".join(s[0::2] for s in segs)


SEPARATORS = ".-_*|"


@TRANSFORMS.register()
class CharSeparators(Transform):
    name = "char_separators"
    family = "spacing"
    description = "Join each word's characters with a separator: 'h.o.w t.o', 'h-o-w t-o'."
    reversible = True

    def apply(self, text: str, rng: random.Random) -> str:
        sep = rng.choice(SEPARATORS)
        return " ".join(sep.join(w) for w in text.split(" "))

    def decode(self, text: str) -> str | None:
        toks = text.split(" ")
        long = [t for t in toks if len(t) >= 3]
        if not long:
            return None
        sep = long[0][1]
        if sep not in SEPARATORS:
            return None
        ok = [t for t in long if len(t) % 2 == 1 and t[1::2] == sep * (len(t) // 2)]
        if len(ok) < 0.6 * len(long):
            return None
        return " ".join(
            t[0::2] if len(t) % 2 == 1 and t[1::2] == sep * (len(t) // 2) else t for t in toks
        )


@TRANSFORMS.register()
class NewlineWords(Transform):
    name = "newline_words"
    family = "spacing"
    description = "One word per line."
    reversible = True  # up to line breaks: the text's own line breaks decode as spaces

    def apply(self, text: str, rng: random.Random) -> str:
        return "\n".join(text.split(" "))

    def decode(self, text: str) -> str | None:
        if "\n" not in text:  # a single word is its own encoding
            return text if text and " " not in text else None
        return text.replace("\n", " ")


# --------------------------------------------------------------------------- noise


@TRANSFORMS.register()
class RandomCaps(Transform):
    name = "random_caps"
    family = "noise"
    description = "Randomly upper- or lower-case each letter."

    def apply(self, text: str, rng: random.Random) -> str:
        return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


@TRANSFORMS.register()
class BonNoise(Transform):
    """Best-of-N augmentation: random caps, adjacent swaps inside words and rare ASCII +-1 noise.

    ``sigma`` scales the swap rate (sigma/2 per position) and the ASCII noise rate (sigma**3).
    """

    name = "bon_noise"
    family = "noise"
    description = "Best-of-N style noise: random caps, adjacent swaps, occasional ASCII noise."

    def __init__(self, sigma: float = 0.4) -> None:
        self.sigma = sigma

    def apply(self, text: str, rng: random.Random) -> str:
        chars = list(text)
        i = 1
        while i < len(chars) - 2:
            if chars[i].isalpha() and chars[i + 1].isalpha() and rng.random() < self.sigma / 2:
                chars[i], chars[i + 1] = chars[i + 1], chars[i]
                i += 2
            else:
                i += 1
        noise = self.sigma**3
        for j, c in enumerate(chars):
            if c.isalpha():
                c = c.upper() if rng.random() < 0.6 else c.lower()
                if len(c) != 1:  # 'ß'.upper() == 'SS', 'İ'.lower() is two code points: keep it
                    c = chars[j]
            o = ord(c)
            if 33 <= o <= 125 and rng.random() < noise:
                c = chr(o + rng.choice((-1, 1)))
            chars[j] = c
        return "".join(chars)


_QWERTY = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_QWERTY):
    for _i, _c in enumerate(_row):
        _NEIGHBOURS[_c] = _row[max(0, _i - 1) : _i] + _row[_i + 1 : _i + 2]
_WORD = re.compile(r"[A-Za-z]{3,}")


@TRANSFORMS.register()
class Typos(Transform):
    name = "typos"
    family = "noise"
    description = "Keyboard typos: dropped, doubled, swapped or neighbouring-key letters."

    def __init__(self, rate: float = 0.3) -> None:
        self.rate = rate

    def _typo(self, w: str, rng: random.Random) -> str:
        i = rng.randrange(1, len(w))
        op = rng.randrange(4)
        if op == 0:
            return w[:i] + w[i + 1 :]
        if op == 1:
            return w[:i] + w[i] + w[i:]
        if op == 2 and i + 1 < len(w) and w[i] != w[i + 1]:
            return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
        near = _NEIGHBOURS.get(w[i].lower(), "")
        return w[:i] + (rng.choice(near) if near else w[i]) + w[i + 1 :] if near else w[:i] + w[i + 1 :]

    def apply(self, text: str, rng: random.Random) -> str:
        matches = list(_WORD.finditer(text))
        if not matches:
            return text
        chosen = {m.start() for m in matches if rng.random() < self.rate}
        if not chosen:
            chosen = {rng.choice(matches).start()}
        out, prev = [], 0
        for m in matches:
            out.append(text[prev : m.start()])
            out.append(self._typo(m.group(0), rng) if m.start() in chosen else m.group(0))
            prev = m.end()
        out.append(text[prev:])
        return "".join(out)


# --------------------------------------------------------------------------- noise, inverted

_LETTERS = re.compile(r"[A-Za-z]{3,}")
#: share of words with a capital after their first letter (Best-of-N capitalises each letter at
#: random: nine words in ten) that marks a text as noised; camelCase code stays under it, and text
#: in capitals only passes but has nothing to correct
_MIN_MIXED = 0.5
#: a word seen once in the vocabulary is still corrected when a candidate is this many times commoner
_COMMONER = 20
#: a word with the same letters counts this many times over one a letter off ("pIeP": pipe, not prep)
_SAME_LETTERS = 10


@lru_cache(maxsize=1)
def word_counts() -> dict[str, int]:
    """The English vocabulary's word counts (``wordlists/en_vocab.json``): the constitutions' and phrase
    banks' words, two letters or more, lowercase."""
    doc = json.loads(resources.files("charter.transforms").joinpath("wordlists/en_vocab.json").read_text("utf-8"))
    return doc["words"]


@lru_cache(maxsize=1)
def _vocab() -> tuple[dict[str, int], dict[str, list[str]], dict[str, list[str]]]:
    """Word counts; words by sorted letters; words of four letters or more by their sorted letters
    less one (so a key reached from a noisy word by one deletion finds words one letter off).
    Built on first use: about 0.2 s and 17 MB."""
    counts = word_counts()
    anagrams: dict[str, list[str]] = {}
    less_one: dict[str, list[str]] = {}
    for w in counts:
        k = "".join(sorted(w))
        anagrams.setdefault(k, []).append(w)
        if len(w) >= 4 and counts[w] >= 2:  # words seen once only as themselves: a third of the memory
            for i in range(len(k)):
                less_one.setdefault(k[:i] + k[i + 1 :], []).append(w)
    return counts, anagrams, less_one


@lru_cache(maxsize=1 << 16)  # inference-time normalisation: a text of one junk word repeated
def _correct(word: str) -> str:
    """The commonest vocabulary word with the same letters in any order, or else with one letter more,
    fewer or different (Best-of-N swaps letters, typos drop, double or replace one); a candidate with
    the same first letter comes first. The word itself, lowercased, when the vocabulary has it (twice
    or more) or nothing is close."""
    counts, anagrams, less_one = _vocab()
    w = word.lower()
    if counts.get(w, 0) >= 2 or len(w) > 30:  # a vocabulary word is kept ("bake", not the commoner "back")
        return w
    k = "".join(sorted(w))
    score = {c: _SAME_LETTERS * counts[c] for c in anagrams.get(k, ()) if c != w}
    if len(w) >= 4:
        near = set(less_one.get(k, ()))  # one letter missing from w
        for i in range(len(k)):
            kk = k[:i] + k[i + 1 :]
            near.update(anagrams.get(kk, ()))  # one letter too many in w
            near.update(less_one.get(kk, ()))  # one letter different
        for c in near - score.keys() - {w}:
            score[c] = counts[c]
    if not score:
        return w
    best = max(score, key=lambda c: (c[0] == w[0], score[c], c))
    return best if counts[best] > _COMMONER * counts.get(w, 0) else w


def unscramble(text: str) -> str | None:
    """Best-of-N noise undone as far as a vocabulary allows: lowercase, each word of three letters or
    more corrected to the commonest word with its letters (:func:`_correct`). Only text whose words
    carry random capitals is read this way (half or more of its first 60 words): ordinary text
    with a rare word is left alone. None when nothing but case changes."""
    words = _LETTERS.findall(text, 0, 2000)[:60]
    if len(words) < 3 or sum(not (w.islower() or w.istitle()) for w in words) < _MIN_MIXED * len(words):
        return None
    low = text.lower()
    out = _LETTERS.sub(lambda m: _correct(m.group()), low)
    return out if out != low else None
