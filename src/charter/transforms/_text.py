"""Small text helpers shared by transforms and normalisation: an English common-word set and
printable/English-likeness scores used to gate decoders."""

from __future__ import annotations

import random
import re

WORD_RE = re.compile(r"[A-Za-z]+")
_WORD2_RE = re.compile(r"[a-z]{2,}")

COMMON_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also always am an and any are around as ask at away
    back bad be because been before being below best better between big both but by buy call
    came can cannot car cause change child children city come could day did different do does
    doing done down during each early easy eat end enough even ever every example explain fact
    family far feel few find first food for found free friend from full get give go going good
    got great had hand happen happened has have having he hear help her here high him his home
    hot house how however i if important in into is it its just keep kind know large last later
    learn least leave left let life like little live long look lot made make makes making man
    many may me mean means might money more most much must my name need never new next night no
    not nothing now of off often old on once one only open or other our out over own part people
    person place play please point possible power problem put question quickly quite rather read
    real really right room run safe said same say school see seem should show side simple since
    small so some someone something sometimes soon start step still stop story such sure take
    talk tell than thank thanks that the their them then there these they thing things think this
    those though through time to today together told too took tried true try turn two under
    until up us use used using very want was water way we well went were what when where which
    while who why will with without word work world would write year yes yet you your
    recipe cook bake bread cake weather garden book music movie travel history science computer
    code program email letter write story poem hello world friend dog cat tree river mountain
    weapon bomb poison kill hack steal drug drugs explosive virus password attack gun knife
    chemical chemicals build synthesize home steps instructions guide tutorial detailed
    """.split()
)


def english_ratio(text: str, limit: int = 2000) -> float:
    """Fraction of alphabetic tokens (two letters or more) in ``text[:limit]`` that are common
    English words; single letters are ignored so that hex or cipher debris cannot score."""
    words = _WORD2_RE.findall(text[:limit].lower())
    if not words:
        return 0.0
    return sum(map(COMMON_WORDS.__contains__, words)) / len(words)


def clean_surrogates(text: str) -> str:
    """``text`` with lone surrogates (which JSON's ``\\ud800`` escapes produce) replaced by U+FFFD: the
    featurisers encode text, and would fail on them."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def printable_ratio(text: str) -> float:
    """Share of printable characters; whitespace counts (Python calls U+3000, the ideographic space
    that separates fullwidth words, unprintable, and a base64 of fullwidth text failed to decode)."""
    if not text:
        return 0.0
    return sum(c.isprintable() or c.isspace() for c in text) / len(text)


def split_at_spaces(text: str, k: int, rng: random.Random) -> list[str]:
    """Split ``text`` into at most ``k`` non-empty chunks at spaces; ``"".join`` restores it."""
    spaces = [i for i, c in enumerate(text) if c == " " and i > 0]
    if k <= 1 or not spaces:
        return [text]
    cuts = sorted(rng.sample(spaces, min(k - 1, len(spaces))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
