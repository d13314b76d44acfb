"""Optimised adversarial suffixes (GCG and its successors) and their inverse for stage 2.

A gradient-searched suffix is token soup: word pieces glued together, markup and code punctuation,
a few instruction words ("describing", "Now write", "sure here"). It is not decoded into anything: it
is *noise* appended to the ask, which dilutes a bag of n-grams and, worse, fills the window a
64-token encoder reads (the ask's last tokens, where a suffix sits). :func:`strip_noise_runs` finds
such runs by how their tokens are built, not by a list of known suffixes, and removes them, so stage 2
reads the ask. Stage 1 still reads the text as written (the stripped text is one more view).
"""

from __future__ import annotations

import random
import re

from charter.transforms.base import TRANSFORMS, Transform
from charter.transforms.noise import word_counts

# Pieces for the attack-only transform: fragments, instruction words and punctuation of the kind an
# optimiser strings together (written here, not copied from any published suffix).
_FRAGMENTS = ("ite", "oppos", "ley", "Manuel", "cdn", "js", "ONE", "Two", "inst", "anter", "Sent", "ci",
              "Arg", "lineback", "Title", "eqn", "arrays", "Made", "Here", "Sure", "pher", "avant", "ctrl")
_WORDS = ("describing", "similarly", "Now", "write", "please", "revert", "sure", "here", "tutorial",
          "sentence", "format", "opposite", "comedy", "manual", "interface", "with", "giving", "unless",
          "expression", "respond", "only", "begin", "correct", "reply")
_SYMBOLS = ("](", "**", "\\", "!--", "({", "})", "==", '">', "<!--", "][", "^{", "'](", '="', "@", "+",
            "$\\", ";)", "%", "`", "|", "}}", "[{", "->", "::", "#")


@TRANSFORMS.register()
class AdversarialSuffix(Transform):
    """Token soup after the request, as gradient search (GCG) produces: 12 to 30 pieces, a third of
    them glued to the next. Attack-only: stage 2 reads the text with such runs stripped."""

    name = "adversarial_suffix"
    family = "suffix"
    description = "Append optimiser-style token soup: 'describing.\\ + similarlyNow write oppos ite](**ONE'."
    augments = False

    def apply(self, text: str, rng: random.Random) -> str:
        pools = (_FRAGMENTS, _WORDS, _SYMBOLS)
        out: list[str] = []
        for _ in range(rng.randint(12, 30)):
            piece = rng.choice(pools[rng.choices((0, 1, 2), weights=(3, 3, 4))[0]])
            if out and rng.random() < 0.35:
                out[-1] += piece
            else:
                out.append(piece)
        return f"{text} {' '.join(out)}"

    def decode(self, text: str) -> str | None:
        return strip_noise_runs(text)


_TOKEN = re.compile(r"\S+")
#: quotes, brackets and sentence punctuation that prose puts around a word ("[his name],", "(see below)")
_OPENERS = "([{\"'“‘"
_CLOSERS = ")]}\"'”’.,;:!?"
#: characters prose seldom puts inside a word (or around one, once quotes and brackets are set aside)
_SYMBOL = re.compile(r"[\\{}\[\]<>=+^|~`@#$%&*_\"()]")
#: sentence punctuation glued to the next word ("write.Now", "ite](Me"), not an abbreviation ("e.g.")
_GLUED = re.compile(r"[A-Za-z][.!?;:,][A-Za-z]{2}")
#: a blank to fill in ("____", "...") or a rule ("----")
_BLANK = re.compile(r"[_.\-~]{2,}[?.!:,]?")
_ESCAPED = re.compile(r"\\[\"'ntr]")
#: leetspeak's symbols for letters
_LEET = re.compile(r"[@$+!|]")
_CAMEL = re.compile(r"[a-z][A-Z]")
_DIGIT = re.compile(r"[0-9]")
#: a hashtag or a mention (#caliphate, @alex)
_TAG = re.compile(r"[#@][A-Za-z][A-Za-z_]*")
_SNAKE = re.compile(r"[A-Za-z]+(?:_[A-Za-z]+)+")
#: punctuation that stands alone in prose
_PROSE_MARKS = frozenset("- – — & / ... … : ; , . ! ? * • · | #".split())
#: a run has at least this many strong tokens (symbols, glued words), at this weight per token
_MIN_STRONG = 4
_MIN_DENSITY = 0.35
#: strong tokens further apart than this many prose tokens belong to different runs
_MAX_GAP = 4
#: words left after stripping: fewer, and the text is read as written
_MIN_LEFT = 3


def _spaced_letters(core: str) -> bool:
    """Letters (or short glosses of a word) joined by one separator: "h_o_w", "w|h|y", "s*o*c*ich*ein"."""
    marks = [c for c in core if not c.isalnum() and c not in "'\""]
    if not marks:
        return False
    sep = max(set(marks), key=marks.count)
    parts = [p for p in re.split(r"[^A-Za-z']+", core) if p]
    return marks.count(sep) >= 0.6 * len(marks) and len(parts) >= 2 and sum(map(len, parts)) <= 2.5 * len(parts)


def _weight(tok: str, after_stop: bool = True) -> float:
    """How much a whitespace token looks like optimiser output: 1 for symbols inside or around a word
    and runs of punctuation, 0.5 for camelCase glue and a lone punctuation mark, 0.25 for an alphabetic
    word outside the vocabulary, 0 for prose. Digits and non-ASCII count as prose (numbers, leetspeak
    and other scripts are read by other views), and so do letters spaced by one separator ("h_o_w":
    an encoding, decoded elsewhere), markdown emphasis and inline code."""
    core = tok.lstrip(_OPENERS).rstrip(_CLOSERS)
    if core.isalpha():  # most tokens: a word, perhaps quoted or before a comma
        if not core.isascii() or len(core) == 1:  # "I", "a": the vocabulary holds words of two letters or more
            return 0.0
        if _CAMEL.search(core):
            return 0.5
        if core.lower() not in word_counts() or (core[0].isupper() and not after_stop):
            return 0.25  # an unknown word, or a capital where no sentence starts
        return 0.0
    if tok in _PROSE_MARKS or _BLANK.fullmatch(tok):
        return 0.0
    if "\\" in tok:
        tok = _ESCAPED.sub("", tok)  # a quoted string in code or JSON ("\\"word\\"") is text, not soup
        if not tok:
            return 0.0
    if len(tok) == 1:
        return 0.0 if tok.isalnum() else 0.5
    if tok[0] == "`" and tok.rstrip(".,;:!?)")[-1:] == "`":
        return 0.0
    core = tok.lstrip(_OPENERS).rstrip(_CLOSERS).strip("*_~")
    if not core:
        return 1.0
    if core.isalpha():  # markdown emphasis around a word
        return _weight(core, after_stop) if core.isascii() else 0.0
    if not core.isascii() or _DIGIT.search(core) or _spaced_letters(core) or _TAG.fullmatch(core):
        return 0.0
    if _SNAKE.fullmatch(core):  # an identifier (user_name): code in prose, not soup
        return 0.25
    if _LEET.search(core) and _LEET.sub("a", core).isalpha():  # leetspeak, or a word with a symbol stuck on
        return 0.5
    if _SYMBOL.search(core) or _GLUED.search(core):
        return 1.0
    return 0.0


def _opens(tok: str) -> bool:
    """A capitalised English word: where the ask after a prefix of soup starts."""
    return tok.istitle() and tok.isalpha() and tok.lower() in word_counts()


def _edge_run(text: str, start: int, end: int, suffix: bool) -> tuple[int, int] | None:
    """The span of token soup at the end (``suffix``) or the start of the line ``text[start:end]``."""
    toks = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(text, start, end)]
    if len(toks) < _MIN_STRONG:
        return None
    memo: dict[int, float] = {}

    def w(i: int) -> float:  # weighed on demand: a walk from a prose edge stops after a few tokens
        if i not in memo:
            memo[i] = _weight(toks[i][2], i == 0 or toks[i - 1][2][-1] in ".!?:\"'")
        return memo[i]

    edge, step = (len(toks) - 1, -1) if suffix else (0, 1)
    strong: list[int] = []
    i, gap = edge, 0
    while 0 <= i < len(toks):
        if w(i) >= 1.0:
            strong.append(i)
            gap = 0
        elif w(i) == 0.0:  # a prose token; glued or unknown words neither break a run nor extend it
            gap += 1
            if gap > _MAX_GAP:
                break
        i += step
    if len(strong) < _MIN_STRONG:
        return None
    inner = strong[-1]
    while 0 <= inner + step < len(toks) and w(inner + step) > 0.0 and (suffix or not _opens(toks[inner + step][2])):
        inner += step  # the glued and unknown words next to the innermost strong token belong to the run
    if suffix:  # a suffix starts after the ask's last sentence when that is near
        for j in range(inner - 1, max(-1, inner - 1 - _MAX_GAP), -1):
            if toks[j][2][-1] in ".?!":
                inner = j + 1
                break
    a, b = sorted((edge, inner))
    if sum(w(i) for i in range(a, b + 1)) < _MIN_DENSITY * (b - a + 1):
        return None
    return toks[a][0], toks[b][1]


def noise_runs(text: str, limit: int = 4000) -> list[tuple[int, int]]:
    """Character spans of optimiser-style token soup at the end of ``text`` (a suffix) or at its start (a
    prefix), each within its line and ``limit`` characters: a cluster of at least four strong tokens
    (weight 1), at most four prose words apart, that reaches the edge within four prose words and
    weighs 0.35 a token or more. Soup in the middle of a text is left alone: there, punctuation-heavy
    tokens are tables, code and formulas."""
    lo, hi = len(text) - len(text.lstrip()), len(text.rstrip())
    if lo >= hi:
        return []
    last_line = max(text.rfind("\n", lo, hi) + 1, lo, hi - limit)
    first_end = text.find("\n", lo, hi)
    first_end = min(hi if first_end < 0 else first_end, lo + limit)
    spans = [r for r in (_edge_run(text, lo, first_end, suffix=False), _edge_run(text, last_line, hi, suffix=True)) if r]
    if len(spans) == 2 and spans[0][1] >= spans[1][0]:  # one line, all soup
        return [(spans[0][0], spans[1][1])]
    return spans


def noise_hint(text: str) -> bool:
    """A cheap pre-check: four or more symbols among the first or the last 600 characters."""
    return len(_SYMBOL.findall(text, 0, 600)) >= _MIN_STRONG or len(_SYMBOL.findall(text, max(0, len(text) - 600))) >= _MIN_STRONG


def strip_noise_runs(text: str) -> str | None:
    """``text`` without its runs of optimiser-style token soup, or None when it has none or too little
    is left (a text that is all soup is read as written)."""
    if not noise_hint(text):
        return None
    spans = noise_runs(text)
    if not spans:
        return None
    parts, last = [], 0
    for s, e in spans:
        parts.append(text[last:s])
        last = e
    parts.append(text[last:])
    out = re.sub(r"[ \t]{2,}", " ", "".join(parts)).strip()
    return out if len(out.split()) >= _MIN_LEFT else None
