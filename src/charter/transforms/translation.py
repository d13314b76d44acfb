"""Word-for-word "translation" through shipped word lists (wordlists/{lang}.json), and its reverse.

Not real translation (no grammar, no morphology): it is a cheap, deterministic stand-in for the
low-resource-language augmentation, and its decode is a best-effort, lossy English gloss. The gloss
reads real text too: besides the transforms' own lists reversed, it looks words up, accents folded,
in hand-written lexicons of inflected forms (wordlists/gloss_{lang}.tsv, also for Italian), since
stage 2's encoder reads English only.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Callable
from functools import cache
from importlib import resources
from itertools import islice

from charter.transforms.base import TRANSFORMS, Transform

LANGS = ("es", "fr", "de", "pt")  # the translate_* transforms
GLOSS_LANGS = (*LANGS, "it")  # the languages normalisation glosses into English
_TOK = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
MAX_PHRASE = 3


@cache
def wordlist(lang: str) -> dict[str, str]:
    """English (lowercase word or phrase) -> target-language word or phrase."""
    raw = resources.files("charter.transforms").joinpath(f"wordlists/{lang}.json").read_text("utf-8")
    return dict(json.loads(raw)["entries"])


@cache
def reverse_wordlist(lang: str) -> dict[str, str]:
    """Target-language (lowercase) -> English; the first English entry wins on collisions."""
    out: dict[str, str] = {}
    for en, tr in wordlist(lang).items():
        out.setdefault(tr.lower(), en)
    return out


def fold(word: str) -> str:
    """Lowercase without accents, as many people type: 'Ubicación' -> 'ubicacion', 'Straße' -> 'strasse'."""
    w = unicodedata.normalize("NFKD", word.lower().replace("ß", "ss"))
    return "".join(c for c in w if not unicodedata.combining(c))


@cache
def gloss_table(lang: str) -> dict[str, str]:
    """Foreign word or phrase (lowercase, and again with accents folded) -> English: the hand-written
    lexicon ``wordlists/gloss_{lang}.tsv`` first, then the ``translate_*`` transform's own list reversed
    for what the lexicon lacks. The lexicon reads real text: reversed, the transform's list gives 55-83
    words a language another sense ("clase" from "type", German "sein" from "his"). Exact spellings come
    before folded ones, so that Portuguese "e" (and) and "é" (is) both keep their sense while
    "ubicacion" still finds "ubicación"."""
    exact: dict[str, str] = {}
    raw = resources.files("charter.transforms").joinpath(f"wordlists/gloss_{lang}.tsv").read_text("utf-8")
    for line in raw.splitlines():
        if line and not line.startswith("#"):
            foreign, en = line.split("\t")
            exact.setdefault(foreign.lower(), en)
    if lang in LANGS:
        for foreign, en in reverse_wordlist(lang).items():
            exact.setdefault(foreign, en)
    out = dict(exact)
    for k, en in exact.items():
        out.setdefault(fold(k), en)
    return out


def _lookup_key(table: dict[str, str]) -> Callable[[str], str]:
    def key(word: str) -> str:
        w = word.lower()
        return w if w in table or w.isascii() else fold(w)  # an ASCII word folds to itself
    return key


def _match_case(src: str, out: str) -> str:
    if len(src) > 1 and src.isupper():
        return out.upper()
    if src[:1].isupper():
        return out[:1].upper() + out[1:]
    return out


def translate_words(text: str, table: dict[str, str], key: Callable[[str], str] = str.lower) -> tuple[str, int, int]:
    """Greedy longest-phrase lookup of ``key(word)``; returns (text, tokens translated, tokens seen)."""
    matches = list(_TOK.finditer(text))
    words = [key(m.group(0)) for m in matches]
    heads = _heads(table)
    out: list[str] = []
    pos = i = hits = 0
    while i < len(matches):
        val, n = table.get(words[i]), 1
        if words[i] in heads:
            for size in range(min(MAX_PHRASE, len(matches) - i), 1, -1):
                span = matches[i : i + size]
                if any(text[a.end() : b.start()] != " " for a, b in zip(span, span[1:])):
                    continue
                key = " ".join(words[i : i + size])
                if key in table:
                    val, n = table[key], size
                    break
        first, last = matches[i], matches[i + n - 1]
        out.append(text[pos : first.start()])
        src = text[first.start() : last.end()]
        if val is None:
            out.append(src)
        else:
            out.append(_match_case(src, val))
            hits += n
        pos, i = last.end(), i + n
    out.append(text[pos:])
    return "".join(out), hits, len(matches)


_HEADS: dict[int, frozenset[str]] = {}


def _heads(table: dict[str, str]) -> frozenset[str]:
    """First words of the table's multi-word keys (tables are cached, so id() is stable)."""
    key = id(table)
    if key not in _HEADS:
        _HEADS[key] = frozenset(k.split(" ", 1)[0] for k in table if " " in k)
    return _HEADS[key]


def language_ratios(text: str, langs: tuple[str, ...] = GLOSS_LANGS) -> list[tuple[float, str]]:
    """(hit ratio, language) for each of ``langs``, best first; the words are folded once."""
    words = [w.lower() for w in _TOK.findall(text)]
    if not words:
        return [(0.0, lang) for lang in langs]
    folded = [None if w.isascii() else fold(w) for w in words]  # an ASCII word folds to itself

    def ratio(table: dict[str, str]) -> float:
        return sum(w in table or (f is not None and f in table) for w, f in zip(words, folded)) / len(words)

    return sorted(((ratio(gloss_table(lang)), lang) for lang in langs), key=lambda r: -r[0])


def gloss(text: str, lang: str, min_ratio: float = 0.3) -> str | None:
    """Best-effort English for ``lang`` text; ``None`` when too few words are in the tables."""
    table = gloss_table(lang)
    out, hits, seen = translate_words(text, table, _lookup_key(table))
    return out if seen and hits / seen >= min_ratio else None


@cache
def _english_words() -> frozenset[str]:
    """Words the tables give as English, and common English words: a foreign entry that is one of
    these ("die", "come", "no") says nothing about the language of the text it is in."""
    from charter.transforms._text import COMMON_WORDS

    words = set(COMMON_WORDS)
    for lang in GLOSS_LANGS:
        for en in gloss_table(lang).values():
            words.update(en.lower().split())
        if lang in LANGS:
            for k in wordlist(lang):
                words.update(k.split())
    return frozenset(words)


@cache
def _foreign_only(lang: str) -> frozenset[str]:
    """Words of ``lang`` that English does not have; single letters ("e", "x", "d") are left out, as
    formulas and abbreviations are full of them."""
    return frozenset(k for k in gloss_table(lang) if " " not in k and len(k) > 1) - _english_words()


@cache
def _any_foreign_only() -> frozenset[str]:
    return frozenset().union(*map(_foreign_only, GLOSS_LANGS))


MIN_FOREIGN = 3  # words that only a foreign language has, for a gloss of mixed text


@cache
def _readable_words() -> frozenset[str]:
    """Words of English and the glossed languages (folded, three letters or more): the lexicons' entries
    and glosses, written without reading any dataset."""
    words = {w for w in _english_words() if len(w) > 2}
    for lang in GLOSS_LANGS:
        words.update(fold(w) for k in gloss_table(lang) for w in k.split() if len(w) > 2)
    return frozenset(words)


_WORD3 = re.compile(r"[^\W\d_]{3,}")
_ASCII3 = re.compile(r"[a-z]{3,}")
MIN_READABLE_LETTERS = 12


def readable_ratio(text: str, limit: int = 600) -> float:
    """Share of the letters of ``text[:limit]``'s words of three letters or more that belong to words of
    English or a glossed language (0 when they have fewer than 12 letters). A decoding that reads as
    language scores high even when it has few function words ("Create a fake video-meeting app
    installer ...": 0.25 by :func:`english_ratio`, 1.0 here); a wrong Caesar shift, Atbash or reversal
    of real text stays under about 0.3, since a long word rarely lands on another word, and shorter
    ones ("de", "ac" in a shifted URL-encoded blob) do not count."""
    low = text[:limit].lower()
    ascii_only = low.isascii()
    words = (_ASCII3 if ascii_only else _WORD3).findall(low)
    letters = sum(map(len, words))
    if letters < MIN_READABLE_LETTERS:
        return 0.0
    if not ascii_only:
        words = [w if w.isascii() else fold(w) for w in words]
    return min(1.0, sum(map(len, filter(_readable_words().__contains__, words))) / letters)


def gloss_mixed(text: str, min_foreign: int = MIN_FOREIGN) -> tuple[str, str] | None:
    """(language, text with its foreign words glossed) for text that mixes English and another
    language: an English wrapper around a Spanish request, a German question with an English
    greeting. A word is glossed when only the foreign language has it, or when the tables give it
    in both languages ("die", "no") and a foreign-only word stands next to it; English stays as
    it is. None when fewer than ``min_foreign`` foreign-only words of one language are there."""
    head = [m.group(0).lower() for m in islice(_TOK.finditer(text), 400)]
    anyf = _any_foreign_only()
    if sum(w in anyf for w in head) < min_foreign:  # the cheap test every English text takes
        return None
    n, lang = max((sum(w in _foreign_only(lg) for w in head), lg) for lg in GLOSS_LANGS)
    if n < min_foreign:
        return None
    matches = list(_TOK.finditer(text[:20000]))
    low = [m.group(0).lower() for m in matches]
    table, only = gloss_table(lang), _foreign_only(lang)
    key = _lookup_key(table)
    keys = [key(w) for w in low]
    f = [k in only for k in keys]
    out, pos = [], 0
    for i, m in enumerate(matches):
        if f[i] or (keys[i] in table and ((i and f[i - 1]) or (i + 1 < len(f) and f[i + 1]))):
            out += [text[pos : m.start()], _match_case(m.group(0), table[keys[i]])]
            pos = m.end()
    out.append(text[pos:])
    return lang, "".join(out)


class _Translate(Transform):
    family = "translation"
    reversible = True
    lang: str

    def apply(self, text: str, rng: random.Random) -> str:
        return translate_words(text, wordlist(self.lang))[0]

    def decode(self, text: str) -> str | None:
        return gloss(text, self.lang)


def _make(lang: str, language: str) -> type[_Translate]:
    cls = type(
        f"Translate{lang.upper()}",
        (_Translate,),
        {
            "name": f"translate_{lang}",
            "lang": lang,
            "description": f"Word-for-word {language} through the shipped word list (lossy).",
            "__module__": __name__,
        },
    )
    return TRANSFORMS.register()(cls)


TranslateES = _make("es", "Spanish")
TranslateFR = _make("fr", "French")
TranslateDE = _make("de", "German")
TranslatePT = _make("pt", "Portuguese")
