"""Word-for-word "translation" through shipped word lists (wordlists/{lang}.json).

Not real translation (no grammar, no morphology): it is a cheap, deterministic stand-in for the
low-resource-language augmentation, and its decode is a best-effort, lossy English gloss.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from importlib import resources

from charter.transforms.base import TRANSFORMS, Transform

LANGS = ("es", "fr", "de", "pt")
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


def _match_case(src: str, out: str) -> str:
    if len(src) > 1 and src.isupper():
        return out.upper()
    if src[:1].isupper():
        return out[:1].upper() + out[1:]
    return out


def translate_words(text: str, table: dict[str, str]) -> tuple[str, int, int]:
    """Greedy longest-phrase lookup; returns (text, tokens translated, tokens seen)."""
    matches = list(_TOK.finditer(text))
    words = [m.group(0).lower() for m in matches]
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


def hit_ratio(text: str, lang: str) -> float:
    """Cheap detector: fraction of words that are single-word entries of ``lang``'s list."""
    words = [w.lower() for w in _TOK.findall(text)]
    if not words:
        return 0.0
    rev = reverse_wordlist(lang)
    return sum(map(rev.__contains__, words)) / len(words)


def gloss(text: str, lang: str, min_ratio: float = 0.3) -> str | None:
    """Best-effort English for ``lang`` text; ``None`` when too few words are in the list."""
    out, hits, seen = translate_words(text, reverse_wordlist(lang))
    return out if seen and hits / seen >= min_ratio else None


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
