"""Layout tricks a chat interface or a model reads through: markup around every word, words joined
without spaces, unusual whitespace, a text spelled out as a JSON list, Braille letters.

All are attack-only (``augments = False``): normalisation undoes each (:mod:`charter.transforms.normalise`),
so training on them would teach nothing, and the default training data stay as they were.
"""

from __future__ import annotations

import json
import math
import random
import re
from functools import lru_cache

from charter.transforms.base import TRANSFORMS, Transform

# --------------------------------------------------------------------------- markup

#: an HTML/XML tag or comment (``<b>``, ``</span>``, ``<font color=red>``, ``<!-- -->``)
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]{0,200})?/?>", re.DOTALL)
#: markdown emphasis, strike-through and code markers at a word's edge (``**w**``, ``_w_``, ``~~w~~``,
#: ``` `w` ```), or inside a word (``ma**k**e``); an underscore inside a word (snake_case) is kept
_MD_EDGE = re.compile(r"(?<![\w*~`])[*_~`]+(?=[\w\"'(\[])|(?<=[\w.,!?;:'\")\]])[*_~`]+(?![\w*~`])|(?<=\w)(?:\*+|~~|`+)(?=\w)")
_BLOCK_TAGS = re.compile(r"</?(?:br|p|div|li|ul|ol|tr|td|th|table|h[1-6]|hr|pre|blockquote)\b[^<>]*>", re.IGNORECASE)


def markup_hint(text: str) -> bool:
    if "<" in text and _TAG.search(text) is not None:
        return True
    return ("*" in text or "_" in text or "~" in text or "`" in text) and len(_MD_EDGE.findall(text, 0, 4000)) >= 4


def strip_markup(text: str) -> str | None:
    """``text`` without HTML tags and comments or markdown emphasis markers (block tags become spaces);
    None if there are none."""
    out = _BLOCK_TAGS.sub(" ", text) if "<" in text else text
    out = _TAG.sub("", out) if "<" in out else out
    out = _MD_EDGE.sub("", out)
    return out if out != text else None


_MARKUP_STYLES = (("**", "**"), ("_", "_"), ("*", "*"), ("~~", "~~"), ("`", "`"), ("<b>", "</b>"),
                  ("<i>", "</i>"), ("<span>", "</span>"), ("<u>", "</u>"))


@TRANSFORMS.register()
class Markup(Transform):
    """Every word in markdown emphasis or an HTML tag: the bag of words a screen reads changes, what a
    model (or a rendered chat) reads does not."""

    name = "markup"
    family = "markup"
    description = "Wrap every word in markdown or HTML markup: **how** _to_ <b>make</b>."
    reversible = True  # exact for text without markup characters of its own
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        styles = rng.sample(_MARKUP_STYLES, 2)
        return " ".join(f"{a}{w}{b}" for i, w in enumerate(text.split(" ")) for a, b in [styles[i % 2]])

    def decode(self, text: str) -> str | None:
        return strip_markup(text)


# --------------------------------------------------------------------------- whitespace

#: whitespace other than a space or a line break: tabs, no-break, en/em/thin/ideographic spaces
_ODD_SPACE = re.compile(r"[^\S \n]")
_ODD_SPACES = ("\t", "\u00a0", "\u2002", "\u2003", "\u2009", "\u3000", "\u205f", "\u00a0\t")


def plain_spacing(text: str) -> str | None:
    """``text`` with each run of unusual whitespace as one space (a ``\\r\\n`` as ``\\n``); None if it has none."""
    t = text.replace("\r\n", "\n")
    if not _ODD_SPACE.search(t):
        return None
    return re.sub(r"(?:[^\S\n])+", " ", t)


@TRANSFORMS.register()
class OddSpaces(Transform):
    name = "odd_spaces"
    family = "spacing"
    description = "Separate words with tabs or Unicode spaces (no-break, em, ideographic) instead of spaces."
    reversible = True  # up to whitespace: every run of it decodes as one space
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        sep = rng.choice(_ODD_SPACES)
        return sep.join(text.split(" "))

    def decode(self, text: str) -> str | None:
        return plain_spacing(text)


# --------------------------------------------------------------------------- joined words


@lru_cache(maxsize=1)
def _word_cost() -> dict[str, float]:
    """-log P(word) from the English vocabulary's counts (``wordlists/en_vocab.json``); a word seen once
    costs more than its count says, so that rare words do not split common ones."""
    from charter.transforms.noise import _vocab

    counts = dict(_vocab()[0])
    counts.update(a=counts["the"] // 2, i=counts["the"] // 2)  # the vocabulary holds words of two letters or more
    total = sum(counts.values())
    # short words outside the everyday few (French "le", "ar", "na") would cut long words into scraps
    return {w: -math.log(c / total) + (3.0 if c < 2 else 0.0) for w, c in counts.items()
            if w.isalpha() and (len(w) > 2 or w in _SHORT)}


_SHORT = frozenset("a i am an as at be by do go he hi if in is it me my no of oh ok on or so to up us we".split())


_MAX_WORD = 20
_UNKNOWN = 30.0  # a letter no vocabulary word covers


def segment(run: str) -> list[str] | None:
    """The likeliest split of a run of letters into vocabulary words (a unigram Viterbi); None if some
    letter is covered by no word."""
    cost = _word_cost()
    low = run.lower()
    n = len(low)
    best = [0.0] + [math.inf] * n
    back = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - _MAX_WORD), i):
            c = cost.get(low[j:i])
            if c is not None and best[j] + c < best[i]:
                best[i], back[i] = best[j] + c, j
        if best[i] == math.inf:
            best[i], back[i] = best[i - 1] + _UNKNOWN, i - 1
    out, i = [], n
    while i > 0:
        out.append(run[back[i]:i])
        i = back[i]
    out.reverse()
    return None if any(low_w.lower() not in cost for low_w in out) else out


_HUMP = re.compile(r"[A-Z]?[a-z]+|[A-Z]")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
#: a whole token (not a stretch of letters inside base64 or a URL) of fifteen letters or more
_JOINED = re.compile(r"(?<![\w+/=.\-])[A-Za-z][A-Za-z_\-]{13,}[A-Za-z](?![\w+/=\-])")


def _split_token(tok: str) -> str | None:
    for sep in ("_", "-"):
        parts = tok.split(sep)
        # how_do_i_make, how-do-i-make; not a word's letters joined by a separator (h_o_w: spacing's job)
        if len(parts) >= 4 and all(p.isalpha() for p in parts) and sum(len(p) == 1 for p in parts) <= len(parts) // 3:
            return " ".join(parts)
    if not tok.isalpha():
        return None
    humps = _CAMEL.split(tok)
    # HowDoIMake, howDoIMake; not random capitals (pRiVaCy), whose humps are letters and scraps
    if len(humps) >= 4 and all(_HUMP.fullmatch(h) for h in humps) and sum(len(h) == 1 for h in humps) <= len(humps) // 3:
        return " ".join(humps)
    if tok.lower() in _word_cost():
        return None
    words = segment(tok)
    # a split into a few long words, not into letters and scraps
    if words and len(words) >= 3 and len(tok) / len(words) >= 2.5:
        return " ".join(words)
    return None


#: letters a text may have segmented (a Viterbi pass costs about twenty lookups a letter): a text of
#: many long junk tokens ("a" means "bbbb…") must not cost seconds
_SEGMENT_BUDGET = 1200
_MAX_TOKEN = 400


def split_joined(text: str) -> str | None:
    """Words run together (``howdoimake``), in snake_case or kebab-case, or in camelCase, split back
    into words; None if no such run of fifteen letters or more is found."""
    changed = False
    budget = _SEGMENT_BUDGET

    def sub(m: re.Match[str]) -> str:
        nonlocal changed, budget
        tok = m.group()
        if len(tok) > min(budget, _MAX_TOKEN) or len(set(tok[:64].lower())) < 5:
            return tok
        budget -= len(tok)
        s = _split_token(tok)
        changed |= s is not None
        return m.group() if s is None else s

    out = _JOINED.sub(sub, text[:20000])
    return out if changed else None


def joined_hint(longest_token: int) -> bool:
    return longest_token >= 15


_JOIN_STYLES = ("none", "snake", "camel", "pascal", "kebab")


@TRANSFORMS.register()
class WordJoin(Transform):
    name = "word_join"
    family = "spacing"
    description = "Run the words together: howdoi, how_do_i, howDoI, HowDoI, how-do-i."
    reversible = True  # up to case and punctuation: the words are recovered, not their capitals
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        words = re.findall(r"[A-Za-z0-9]+", text)
        style = rng.choice(_JOIN_STYLES)
        if style == "snake":
            return "_".join(w.lower() for w in words)
        if style == "kebab":
            return "-".join(w.lower() for w in words)
        if style == "camel":
            return "".join(w.lower() if i == 0 else w.capitalize() for i, w in enumerate(words))
        if style == "pascal":
            return "".join(w.capitalize() for w in words)
        return "".join(w.lower() for w in words)

    def decode(self, text: str) -> str | None:
        return split_joined(text)


# --------------------------------------------------------------------------- spelled-out lists

#: a JSON-like list of four or more quoted strings: ["h","o","w"] or ['how', 'to']
_LIST = re.compile(r"\[\s*(?:(?:\"(?:[^\"\\\n]|\\.){0,40}\"|'[^'\\\n]{0,40}')\s*,\s*){3,}(?:\"(?:[^\"\\\n]|\\.){0,40}\"|'[^'\\\n]{0,40}')\s*\]")


def join_lists(text: str) -> str | None:
    """Each list of quoted characters or words as the text it spells (characters joined as they are,
    words with spaces); None if there is none."""
    if "[" not in text:
        return None
    changed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal changed
        src = m.group()
        try:
            items = json.loads(src if '"' in src[:3] else re.sub(r"'([^']*)'", lambda x: json.dumps(x.group(1)), src))
        except ValueError:
            return src
        if not all(isinstance(x, str) for x in items):
            return src
        chars = all(len(x) <= 1 for x in items)
        changed = True
        return "".join(x or " " for x in items) if chars else " ".join(x.strip() for x in items)

    out = _LIST.sub(sub, text)
    return out if changed else None


@TRANSFORMS.register()
class CharList(Transform):
    name = "char_list"
    family = "splitting"
    description = "Spell the text out as a JSON list of its characters or words: [\"h\", \"o\", \"w\"]."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        words = text.split(" ")
        items = list(text) if len(words) < 4 or rng.random() < 0.5 else words
        return json.dumps(items, ensure_ascii=False)

    def decode(self, text: str) -> str | None:
        return join_lists(text)


# --------------------------------------------------------------------------- Braille

_BRAILLE_LETTERS = "⠁⠃⠉⠙⠑⠋⠛⠓⠊⠚⠅⠇⠍⠝⠕⠏⠟⠗⠎⠞⠥⠧⠺⠭⠽⠵"
_BRAILLE_PUNCT = {",": "⠂", ";": "⠆", ":": "⠒", ".": "⠲", "!": "⠖", "?": "⠦", "'": "⠄", "-": "⠤"}
_CAPITAL, _NUMBER = "⠠", "⠼"
_TO_BRAILLE = {c: b for c, b in zip("abcdefghijklmnopqrstuvwxyz", _BRAILLE_LETTERS)} | _BRAILLE_PUNCT
_FROM_BRAILLE = {b: c for c, b in _TO_BRAILLE.items()}
_DIGITS = {b: d for b, d in zip(_BRAILLE_LETTERS[:10], "1234567890")}
_BRAILLE_RUN = re.compile("[\u2800-\u28ff]")


def braille_hint(text: str) -> bool:
    return _BRAILLE_RUN.search(text) is not None


def decode_braille(text: str) -> str | None:
    """English Grade 1 Braille (letters, the capital and number signs, common punctuation) as text;
    None if fewer than four Braille cells."""
    if len(_BRAILLE_RUN.findall(text, 0, 4000)) < 4:
        return None
    out: list[str] = []
    cap = num = False
    for c in text:
        if c == _CAPITAL:
            cap = True
            continue
        if c == _NUMBER:
            num = True
            continue
        if num and c in _DIGITS:
            out.append(_DIGITS[c])
            continue
        num = False if not c.isdigit() else num
        ch = _FROM_BRAILLE.get(c, c)
        out.append(ch.upper() if cap else ch)
        cap = False
    return "".join(out)


@TRANSFORMS.register()
class Braille(Transform):
    name = "braille"
    family = "cipher"
    description = "English Grade 1 Braille cells (⠓⠕⠺), with capital and number signs."
    reversible = True
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        out = []
        for c in text:
            if c.isdigit():
                out.append(_NUMBER + _BRAILLE_LETTERS["1234567890".index(c)])
            elif c.isupper() and c.lower() in _TO_BRAILLE:
                out.append(_CAPITAL + _TO_BRAILLE[c.lower()])
            else:
                out.append(_TO_BRAILLE.get(c, c))
        return "".join(out)

    def decode(self, text: str) -> str | None:
        return decode_braille(text)


# --------------------------------------------------------------------------- doubled letters

_PAIR = re.compile(r"([A-Za-z])\1")


def undouble(text: str) -> str | None:
    """Text whose every letter is written twice (``hhooww``), with each pair as one letter; None unless
    nearly all of its letters come in pairs."""
    letters = sum(c.isalpha() for c in text[:4000])
    if letters < 8 or 2 * len(_PAIR.findall(text[:4000])) < 0.9 * letters:
        return None
    return re.sub(r"(.)\1", r"\1", text, flags=re.DOTALL)


def doubled_hint(tokens: list[str]) -> bool:
    return len(tokens[0]) >= 2 and tokens[0][0] == tokens[0][1] and tokens[-1][:1] == tokens[-1][1:2]


@TRANSFORMS.register()
class DoubledLetters(Transform):
    name = "doubled_letters"
    family = "noise"
    description = "Write every character twice: hhooww  ttoo."
    reversible = True  # exact up to letters that were doubled in the original ("book" -> "bok")
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        return "".join(c * 2 for c in text)

    def decode(self, text: str) -> str | None:
        return undouble(text)
