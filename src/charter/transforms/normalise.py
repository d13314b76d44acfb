"""Normalisation views for inference: the input plus every decoding that plausibly applies.

Classifiers score each view and keep the worst case, so an encoded request is judged on its
decoded text. Every detector sits behind a cheap pre-check (``str.isascii``, one regex, the
English-word ratio) so that plain text pays a few microseconds; decoders that change nothing or
that make the text less English-like are dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np

from charter.transforms._text import clean_surrogates, english_ratio
from charter.transforms.charlevel import (
    CONFUSABLE_CHARS,
    INVISIBLE_RE,
    LEET_HINT,
    MARKED_LATIN_RE,
    TAG_RE,
    decode_tags,
    fold_confusables,
    fold_leet,
    strip_marks,
)
from charter.transforms.ciphers import (
    ATBASH,
    CAESAR_HEADER_RE,
    caesar,
    caesar_table,
    decode_morse,
    header_shift,
    unreverse_lines,
)
from charter.transforms.encodings import (
    codes_hint,
    decode_base64,
    decode_codes,
    decode_entities,
    decode_escapes,
    decode_hex,
    decode_quoted_printable,
    decode_url,
    sub_ascii85,
    sub_base32,
)
from charter.transforms.formatting import (
    braille_hint,
    decode_braille,
    doubled_hint,
    join_lists,
    joined_hint,
    markup_hint,
    plain_spacing,
    split_joined,
    strip_markup,
    undouble,
)
from charter.transforms.noise import CharSeparators, CharSpacing, unscramble
from charter.transforms.linguistic import apply_legend, decode_pseudo, decode_pseudo_runs
from charter.transforms.structural import decode_payload_split
from charter.transforms.suffix import strip_noise_runs
from charter.transforms.wordplay import acrostic_hint, decode_pig_latin, pig_hint, read_acrostic

View = tuple[str, str]

#: views whose output is decoded once more (depth 2): decodings, and foldings, so that leetspeak or
#: look-alike German still gets a gloss
_NESTABLE_PREFIXES = ("base64", "hex", "url", "rot13", "caesar", "atbash", "reverse", "morse",
                      "tag_payload", "pseudo_language", "payload_split", "keyword_legend", "segments",
                      "leet", "confusables", "compat", "marks_stripped", "spacing", "invisible_stripped",
                      "unscrambled", "markup_stripped", "plain_spacing", "html_entities", "escapes",
                      "quoted_printable", "base32", "ascii85", "char_codes", "words_split", "list_joined",
                      "braille", "undoubled")  # fmt: skip
_ENGLISH_OK = 0.3  # the text already reads as English: skip cipher brute force
_GAIN = 0.2  # a cipher view must beat the original's English ratio by this much
_MIN_RATIO = 0.35
#: or a cipher view must have this share of its letters in known words (translation.readable_ratio), and
#: READABLE_GAIN more than the original: real text of any register scores 0.56 or more in 95 of 100
#: generated requests, a wrong shift, Atbash or reversal of one 0.32 or less in 999 of 1,000
READABLE_MIN = 0.5
READABLE_GAIN = 0.25
#: text reading this well needs no cipher tried (nine in ten generated requests do; a cipher of one, at most 0.32)
READABLE_SKIP = 0.6

_SEPS = ".-_*|"
_C = r"[^\s.\-_*|+=<>/\\]"
_SEP_RUN = re.compile(rf"(?<!\S){_C}(?: {_C}(?: {_C})+|([._*|-]){_C}(?:\1{_C})*)(?!\S)")
_B64_FULL = re.compile(r"[A-Za-z0-9+/_\-]{8,}={0,2}")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_\-])[A-Za-z0-9+/_\-]{20,}={0,2}")
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])(?:(?:0x|\\x)?[0-9a-fA-F]{2}[\s:,]?){8,}")
_CONFUSABLE_RE = re.compile("[" + re.escape("".join(sorted(CONFUSABLE_CHARS))) + "\uff01-\uff5e\u3000]")
_FULLWIDTH = re.compile("[\uff21-\uff3a\uff41-\uff5a]")
_ASCII_WORD = re.compile(r"[A-Za-z]{2,}")
_LEET_CHARS = "0134579@$+"
_PCT2 = re.compile(r"%[0-9A-Fa-f]{2}.*%[0-9A-Fa-f]{2}", re.DOTALL)


#: a line that opens a turn in a transcript ("User: ...", "Human: ...", "Q: ...")
_TURN = re.compile(r"^[ \t>*#]*(user|human|question|q|me|you|customer|assistant|ai|answer|a|bot|model|system|gpt)\s*:\s?",
                   re.IGNORECASE | re.MULTILINE)
_ASKER = {"user", "human", "question", "q", "me", "customer"}


def turn_views(text: str) -> list[View]:
    """For a transcript (many-shot prompts, rendered conversations): the last asker turn alone,
    and all asker turns without the answers between them. Benign filler turns dilute a
    whole-text score; the payload usually sits in the last turn or is spread over the asks."""
    marks = list(_TURN.finditer(text))
    if len(marks) < 3:
        return []
    asks = [text[m.end() : nxt.start() if nxt else len(text)].strip()
            for m, nxt in zip(marks, [*marks[1:], None]) if m.group(1).lower() in _ASKER]
    asks = [a for a in asks if a]
    if not asks:
        return []
    out: list[View] = [("last_turn", asks[-1])]
    if len(asks) > 1:
        out.append(("asker_turns", "\n".join(asks)))
    return out


def asker_turn_after_one(text: str) -> str | None:
    """The asker's turn of a two-turn transcript (``system: …`` then ``user: …``), which
    :func:`turn_views` leaves alone (two turns are too few to dilute an ask)."""
    marks = list(_TURN.finditer(text))
    if len(marks) != 2 or marks[1].group(1).lower() not in _ASKER:
        return None
    return text[marks[1].end():].strip() or None


_SPACES = re.compile(r"[ \n]+")


def _key(text: str) -> str:
    # tabs and Unicode spaces count: they are character n-grams the classifiers read
    return _SPACES.sub(" ", text).strip(" \n").lower()


def collapse_spacing(text: str) -> str | None:
    """'h o w  t o' -> 'how to', 'h.o.w t-o' -> 'how to', one-word-per-line -> one line."""
    for t in (CharSpacing(), CharSeparators()):
        whole = t.decode(text)
        if whole is not None and whole != text:
            return whole
    changed = False

    def run(m: re.Match[str]) -> str:
        nonlocal changed
        changed = True
        return m.group(0)[::2]

    out = _SEP_RUN.sub(run, text)
    if changed:
        out = re.sub(r"(?<=\S) {2,}(?=\S)", " ", out)
    if "\n" in out:
        lines = out.split("\n")
        if len(lines) >= 3 and sum(len(ln.split()) <= 1 for ln in lines) >= 0.8 * len(lines):
            filled = [ln.strip() for ln in lines if ln.strip()]
            if sum(len(ln) == 1 for ln in filled) >= 0.8 * len(filled):
                # one character a line, blank lines between words: the words, not their letters spaced out
                out = "".join(ln.strip() or " " for ln in lines)
                out = " ".join(out.split())
            else:
                out = " ".join(filled)
            changed = True
    return out if changed else None


def _spacing_hint(tokens: list[str], text: str) -> bool:
    run = 0
    for t in tokens:
        if len(t) == 1:
            run += 1
            if run >= 3:
                return True
            continue
        run = 0
        if len(t) >= 3 and t[1] in _SEPS and t[1] == t[-2] and not t[0] in _SEPS:
            return True
    return text.count("\n") >= 2


def _sub_runs(text: str, pattern: re.Pattern[str], decoder: Callable[[str], str | None]) -> str | None:
    """Decode the whole text, or else every long run inside it that decodes."""
    whole = decoder(text.strip())
    if whole is not None:
        return whole
    changed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal changed
        d = decoder(m.group(0))
        if d is None:
            return m.group(0)
        changed = True
        return d

    out = pattern.sub(sub, text)
    return out if changed else None


def _base64(text: str) -> str | None:
    s = "".join(text.split())
    if _B64_FULL.fullmatch(s):
        d = decode_base64(s)
        if d is not None:
            return d
    if not _B64_RUN.search(text):
        return None
    return _sub_runs(text, _B64_RUN, decode_base64)


def _hex(text: str) -> str | None:
    if not _HEX_RUN.search(text):
        return None
    return _sub_runs(text, _HEX_RUN, decode_hex)


_CAESAR_TABLES = [caesar_table(s) for s in range(26)]


#: English letter frequencies (percent), a..z
_EN_FREQ = (8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9,
            0.095, 6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074)  # fmt: skip
#: row ``sh``: how well ciphertext letter counts fit English after shifting by ``sh``
_SHIFT_FIT = np.array([[_EN_FREQ[(j + sh) % 26] for j in range(26)] for sh in range(26)])


def _caesar_shifts(sample: str) -> list[int]:
    """The two shifts whose output's letter counts fit English best."""
    low = sample.lower()
    counts = np.array([low.count(c) for c in "abcdefghijklmnopqrstuvwxyz"], dtype=float)
    return [int(s) for s in np.argsort(-(_SHIFT_FIT @ counts)) if s][:2]


def _ciphers(text: str) -> Iterator[View]:
    """Whole-text ciphers, tried only when the text does not already read as English."""
    m = CAESAR_HEADER_RE.match(text)
    if m:
        yield "caesar", caesar(text[m.end() :], -header_shift(m))
        return
    if english_ratio(text, 300) >= _ENGLISH_OK or len(_ASCII_WORD.findall(text, 0, 600)) < 2:
        return
    base = english_ratio(text)
    need = max(_MIN_RATIO, base + _GAIN)
    yield from _letter_ciphers(text, base, need)
    p = decode_pseudo(text)
    if p is not None and english_ratio(p) >= need:
        yield "pseudo_language", p
    yield from _translation(text, need)


def _letter_ciphers(text: str, base: float, need: float) -> Iterator[View]:
    """Caesar/rot13 (the shift by letter frequency), Atbash and reversal, each where its output reads as
    language: an English ratio of at least ``need`` (``base`` is the text's own), or most of its letters
    in words of English or a glossed language (:func:`readable_ratio`), well above the text's own share.
    Imperative or technical English has few common words ("Create a fake video-meeting app installer
    ..." has a quarter), and a cipher of German or Spanish has English's letter frequencies but none of
    its words; the view is decoded again, so the German gets its gloss."""
    from charter.transforms.translation import readable_ratio

    own = readable_ratio(text, 300)
    if own >= READABLE_SKIP:  # already reads as language: no shift, Atbash or reversal of it would
        return
    floor = max(READABLE_MIN, own + READABLE_GAIN)

    def reads(v: str) -> float:
        """How well ``v`` reads: its English ratio, or above any English ratio when only its words say so."""
        r = english_ratio(v)
        if r >= need:
            return r
        return 1.0 + rr if (rr := readable_ratio(v, 300)) >= floor else 0.0

    sample = text[:600]
    best, best_r = 0, 0.0
    for shift in _caesar_shifts(sample):
        if (r := reads(sample.translate(_CAESAR_TABLES[shift]))) > best_r:
            best, best_r = shift, r
    if best:
        yield ("rot13" if best == 13 else f"caesar{26 - best}"), caesar(text, best)
    for name, fn in (("atbash", lambda t: t.translate(ATBASH)), ("reverse", lambda t: t[::-1])):
        v = fn(text)
        if reads(v):
            yield name, v


def _translation(text: str, need: float) -> Iterator[View]:
    from charter.transforms.translation import gloss, language_ratios

    sample = text[:2000]
    if len(sample.split()) < 3:
        return
    ratio, lang = language_ratios(sample)[0]
    if ratio >= 0.5:
        v = gloss(text, lang)
        if v is not None and english_ratio(v) >= need:
            yield f"translation_{lang}", v


def _leety(tokens: list[str]) -> bool:
    """Short tokens mixing letters with leet digits/symbols (not e-mail addresses or URLs)."""
    n = 0
    for t in tokens:
        if len(t) <= 16 and LEET_HINT.search(t) and not ("@" in t and "." in t) and "%" not in t:
            n += 1
    return n >= 1 and n >= 0.1 * len(tokens)


def _decoders(text: str, max_len: int) -> Iterator[View]:
    """First-level decoded views of ``text``, most specific first (a decoder whose output can
    grow past ``max_len`` characters builds only that much of it)."""
    if not text.isascii():
        if TAG_RE.search(text):
            hidden = decode_tags(text)
            if hidden:
                yield "tag_payload", hidden
        visible = text
        if INVISIBLE_RE.search(text):
            visible = INVISIBLE_RE.sub("", text)
            yield "invisible_stripped", visible
        if MARKED_LATIN_RE.search(visible):  # zalgo, strike-through, underline
            yield "marks_stripped", fold_confusables(strip_marks(visible))
        # mixed scripts or fullwidth only: plain Cyrillic or Greek text is left alone
        if _CONFUSABLE_RE.search(text) and (_ASCII_WORD.search(text) or _FULLWIDTH.search(text)):
            yield "confusables", fold_confusables(visible)
        elif not unicodedata.is_normalized("NFKC", visible):
            # styled letters (mathematical bold or script, circled, squared, small capitals' kin)
            # have compatibility forms but no lookalike that the check above would see
            yield "compat", unicodedata.normalize("NFKC", visible)
    tokens = text.split()
    if not tokens:
        return
    if _spacing_hint(tokens, text):
        v = collapse_spacing(text)
        if v is not None:
            yield "spacing", v
    longest = max(map(len, tokens))
    if longest >= 16 or len(tokens[0]) == 2:
        for name, fn in (("base64", _base64), ("hex", _hex)):
            v = fn(text)
            if v is not None:
                yield name, v
    if "%" in text and _PCT2.search(text):
        v = decode_url(text)
        if v is not None:
            yield "url", v
    if tokens[0][0] in ".-":
        v = decode_morse(text)
        if v is not None:
            yield "morse", v
    if any(c in text for c in _LEET_CHARS) and _leety(tokens[:400]):
        yield "leet", fold_leet(text)
    if not text.islower():
        v = unscramble(text)
        if v is not None:
            yield "unscrambled", v
    if '" means "' in text:
        v = apply_legend(text, max_len)
        if v is not None:
            yield "keyword_legend", v
    if '= "' in text:
        v = decode_payload_split(text)
        if v is not None:
            yield "payload_split", v
    glossed = False
    for name, v in _ciphers(text):
        glossed |= name.startswith("translation_")
        yield name, v
    if not glossed:
        from charter.transforms.translation import gloss_mixed

        if (g := gloss_mixed(text)) is not None:
            yield f"translation_{g[0]}", g[1]
    if (v := unreverse_lines(text)) is not None:
        yield "reverse_words", v
    v = _decode_segments(text)
    if v is not None:
        yield "segments", v
    yield from _layout(text, tokens, longest)


def _layout(text: str, tokens: list[str], longest: int) -> Iterator[View]:
    """Decodings added after the others, so that they take only the view slots those leave: markup
    around words, tabs or Unicode spaces between them, escapes and entities, rarer byte encodings,
    character codes, spelled-out lists, words run together, Braille, pig latin, acrostics, and the text
    without an optimiser's token soup at its end or start."""
    if markup_hint(text) and (v := strip_markup(text)) is not None:
        yield "markup_stripped", v
    if (v := plain_spacing(text)) is not None:
        yield "plain_spacing", v
    if "&" in text and (v := decode_entities(text)) is not None:
        yield "html_entities", v
    if "\\" in text and (v := decode_escapes(text)) is not None:
        yield "escapes", v
    if "=" in text and (v := decode_quoted_printable(text)) is not None:
        yield "quoted_printable", v
    if doubled_hint(tokens) and (v := undouble(text)) is not None:
        yield "undoubled", v
    if longest >= 16 or len(tokens[0]) == 2:
        for name, fn in (("base32", sub_base32), ("ascii85", sub_ascii85)):
            if (v := fn(text)) is not None:
                yield name, v
    if codes_hint(text) and (v := decode_codes(text)) is not None:
        yield "char_codes", v
    if "[" in text and (v := join_lists(text)) is not None:
        yield "list_joined", v
    if joined_hint(longest) and (v := split_joined(text)) is not None:
        yield "words_split", v
    if not text.isascii() and braille_hint(text) and (v := decode_braille(text)) is not None:
        yield "braille", v
    if pig_hint(tokens) and (v := decode_pig_latin(text)) is not None:
        yield "pig_latin", v
    if acrostic_hint(text) and (v := read_acrostic(text)) is not None:
        yield "acrostic", v
    if (v := strip_noise_runs(text)) is not None:
        yield "noise_stripped", v


#: a run of Morse letters (at least four), as it sits inside other text
_MORSE_RUN = re.compile(r"(?<![\w.\-])(?:[.\-]{1,7}(?: ?/ ?| ))+[.\-]{1,7}(?![\w.\-])")
#: lines and sentence-like pieces: quotes, brackets, colons and sentence ends separate a payload
#: from the English around it (a JSON field, "Open question: ...", a code comment)
_SEGMENT = re.compile(r"[^\n\"()\[\]{}:.!?]+[.!?]?")
_MAX_SEGMENTS = 40
#: a Caesar header (CAESAR_HEADER_RE) inside the text, and the line it introduces
_STATED_SHIFT = re.compile(CAESAR_HEADER_RE.pattern.removeprefix("^") + r"(?P<line>[^\n]*)")


def _decode_segment(seg: str) -> str | None:
    """A decoding of one unreadable segment: its runs of pseudo-language words (each word must parse, so
    two in a row are enough), else Caesar/rot13 (by letter frequency), Atbash or reversal, whichever reads as
    language; None if none does."""
    base = english_ratio(seg)
    if base >= _ENGLISH_OK or (words := len(_ASCII_WORD.findall(seg))) < 2:
        return None
    need = max(_MIN_RATIO, base + _GAIN)
    if (p := decode_pseudo_runs(seg)) is not None and _reads_as_language(p, need):
        return p
    if words < 4:
        return None
    return next((v for _, v in _letter_ciphers(seg, base, need)), None)


def _reads_as_language(v: str, need: float) -> bool:
    from charter.transforms.translation import readable_ratio

    return english_ratio(v) >= need or readable_ratio(v) >= READABLE_MIN


def _decode_segments(text: str) -> str | None:
    """Enciphered or Morse payloads inside otherwise readable text (a rot13 line in a document,
    Morse in a code comment, a Caesar string in a JSON field): each is decoded on its own and put
    back in place. The whole-text decoders miss these, because the wrapper reads as English."""
    out, changed = text, False
    if "-" in text or "." in text:
        def morse(m: re.Match[str]) -> str:
            nonlocal changed
            d = decode_morse(m.group())
            if d is None or d.count("?") > len(d) // 4 or len(d.replace(" ", "")) < 4:
                return m.group()
            changed = True
            return d.lower()
        out = _MORSE_RUN.sub(morse, out)
    if "shift" in out or "ROT" in out or "places" in out:  # a stated shift anywhere: the line after it
        def stated(m: re.Match[str]) -> str:
            nonlocal changed
            changed = True
            return caesar(m.group("line"), -header_shift(m))
        out = _STATED_SHIFT.sub(stated, out)
    if _ASCII_WORD.search(out):
        parts, last = [], 0
        for i, m in enumerate(_SEGMENT.finditer(out)):
            if i >= _MAX_SEGMENTS:
                break
            d = _decode_segment(m.group())
            if d is not None:
                parts += [out[last : m.start()], d]
                last, changed = m.end(), True
        out = "".join(parts) + out[last:]
    return out if changed else None


def fold_all(text: str, max_len: int | None = None) -> str:
    """The cheap foldings at once: strip invisible, fold confusables, collapse spacing, fold
    leetspeak, lowercase. With ``max_len``, the result is cut to that length, and so is the
    text after NFKC (which can make a character eighteen)."""
    if not text.isascii():
        text = INVISIBLE_RE.sub("", text)
        if MARKED_LATIN_RE.search(text):
            text = strip_marks(text)
        text = fold_confusables(text)[:max_len]
    text = collapse_spacing(text) or text
    if LEET_HINT.search(text):
        text = fold_leet(text)
    return text.lower()[:max_len]


def _walk(text: str, depth: int, max_len: int) -> Iterator[View]:
    for name, v in _decoders(text, max_len):
        yield name, v
        if depth > 1 and name.startswith(_NESTABLE_PREFIXES) and v:
            # decode the view as it is kept (cut to max_len), not a longer expansion of it
            for sub, w in _walk(v[:max_len], depth - 1, max_len):
                yield f"{name}+{sub}", w


def views(text: str, max_views: int = 8, max_len: int = 20000, depth: int = 2) -> list[View]:
    """``[("original", text), (view_name, decoded), ...]``: distinct views, at most ``max_views``,
    each at most ``max_len`` characters (the input is cut to ``max_len`` first)."""
    text = mask_opaque(text[:max_len])
    out: list[View] = [("original", text)]
    seen = {_key(text)}
    for name, v in turn_views(text):
        if _key(v) not in seen:
            seen.add(_key(v))
            out.append((name, v))
    folded_hint = False
    # a transcript's last ask is decoded on its own too: a wrapper of benign turns hides an
    # obfuscated ask from the whole-text decoders' checks (the scrambled words are too few)
    last = [v for n, v in out if n == "last_turn"]
    walks = [_walk(text, depth, max_len), *(((f"last_turn+{n}", v) for n, v in _walk(t, depth, max_len)) for t in last)]
    for name, v in (nv for w in walks for nv in w):
        if len(out) >= max_views:
            break
        if name in ("invisible_stripped", "marks_stripped", "confusables", "compat", "spacing", "leet"):
            folded_hint = True
        v = clean_surrogates(v[:max_len])  # a decoder can make a lone surrogate ("\ud800" in JSON), which no featuriser encodes
        k = _key(v)
        if v and k not in seen:
            seen.add(k)
            out.append((name, v))
    if folded_hint and len(out) < max_views:
        v = fold_all(text, max_len)
        if _key(v) not in seen:
            out.append(("folded", v))
    return out


#: a long run of base64 or hex characters with no space in it: data (an image, a key, a blob) or an encoded text
_OPAQUE_RUN = re.compile(r"[A-Za-z0-9+/_\-]{200,}={0,2}")
OPAQUE = " [data] "


def _is_text(raw: bytes) -> bool:
    """Mostly readable characters (random bytes give about 40%; text with some broken bytes, 80% and up)."""
    s = INVISIBLE_RE.sub("", raw[:3000].decode("utf-8", "replace"))
    return bool(s) and sum((c.isprintable() and c != "\ufffd") or c in "\n\r\t" for c in s) >= 0.55 * len(s)


def _opaque(run: str) -> bool:
    """Whether a long base64 or hex run carries no text: random or compressed bytes. Decoded leniently (a
    prefix of whole groups), so that text with a character added to break strict decoding still counts."""
    digits = sum(c.isdigit() for c in run)
    if not 0.1 * len(run) <= digits <= 0.9 * len(run):  # a long number, or a long word: not encoded data
        return False
    if len(re.findall(r"[0-9a-fA-F]", run)) >= 0.8 * len(run):  # hex, perhaps with noise on top
        nibbles = re.sub(r"[^0-9a-fA-F]", "0", run)  # a noisy digit spoils one byte, not the alignment
        if _is_text(bytes.fromhex(nibbles[: len(nibbles) - len(nibbles) % 2])):
            return False
    bare = run.rstrip("=")
    # base64url, or base64 with separators between its characters; from any of the four alignments
    # (a payload split across turns starts mid-group)
    for s in (bare.replace("-", "+").replace("_", "/"), bare.replace("-", "").replace("_", "")):
        for k in range(4):
            t = s[k:]
            try:
                if _is_text(base64.b64decode(t[: len(t) - len(t) % 4], validate=True)):
                    return False
            except (binascii.Error, ValueError):
                pass
    return True


def mask_opaque(text: str) -> str:
    """``text`` with each long base64 or hex run that decodes to no text replaced by ``[data]``.

    Stage 1 reads a bag of n-grams weighted 1/sqrt(n): thousands of random n-grams move its score by
    their mean weight times sqrt(n), and a benign question about 13 KB of base64 data scored 1.0. Such a
    run holds nothing a model could read as an instruction; a run that decodes to text keeps its place
    (and its decoded view)."""
    if len(text) < 200 or not _OPAQUE_RUN.search(text):
        return text
    return _OPAQUE_RUN.sub(lambda m: OPAQUE if _opaque(m.group()) else m.group(), text)


def warm_up() -> None:
    """Load the word lists the decoders consult (a few tenths of a second, once per process), so that a
    server's first requests do not pay for them: the cipher checks read every gloss lexicon."""
    from charter.transforms.noise import _vocab
    from charter.transforms.translation import _any_foreign_only, _readable_words

    _readable_words()
    _any_foreign_only()
    _vocab()


@lru_cache(maxsize=64)
def _views_memo(text: str) -> tuple[View, ...]:
    return tuple(views(text))


def cached_views(text: str) -> list[View]:
    """``views(text)``, memoised for the last few texts: a guarded request's input check and its
    exchange monitor read the same prompt, and decoding it twice cost about 0.07 ms."""
    return list(_views_memo(text))
