"""Spacing tricks (reversible) and Best-of-N style character noise (not reversible)."""

from __future__ import annotations

import random
import re

from charter.transforms.base import TRANSFORMS, Transform

# --------------------------------------------------------------------------- spacing


@TRANSFORMS.register()
class CharSpacing(Transform):
    """Exact decode: characters joined by one space, words by two."""

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
    reversible = True

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
