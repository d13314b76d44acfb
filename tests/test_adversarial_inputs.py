"""Inputs crafted to make the guard slow: each is timed against ordinary text of the same size in
the same run, and must stay within a generous multiple of it (the bugs these guard against were
100-4,000 times slower, growing with the input). Ratios only, never wall-clock limits."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from charter.classifiers.streaming import ExchangeStream
from charter.guard import Guard
from charter.transforms.linguistic import apply_legend
from charter.transforms.normalise import _views_memo, fold_all, views
from charter.transforms.structural import decode_payload_split

PROSE = ("The quick brown fox jumps over the lazy dog while the farmer walks home along the river, "
         "thinking about the weather, the harvest and the long winter that will soon arrive. ")
N = 20_000  # one window: the views of a longer input are these, once per window


def rep(unit: str, n: int = N) -> str:
    return (unit * (n // len(unit) + 1))[:n]


def best_of(fn: Callable[[], object], reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard.load()


def _stage1_times(guard: Guard, text: str, reps: int = 4) -> tuple[float, float]:
    """The best time of views plus stage 1 over all of them (the part of check_input that grows with the
    input) for prose and for ``text``, measured alternately after a first untimed run of each (which loads
    word lists and compiles regexes): another process's burst then slows both, not one."""
    def run(t: str) -> float:
        _views_memo.cache_clear()
        t0 = time.perf_counter()
        guard.stage1_probs(t)
        return time.perf_counter() - t0

    prose = rep(PROSE)
    run(prose), run(text)
    best = [float("inf"), float("inf")]
    for _ in range(reps):
        best = [min(best[0], run(prose)), min(best[1], run(text))]
    return best[0], best[1]


@pytest.mark.parametrize("name,text,bound", [
    # `^\s*` in the payload-split regex rescanned every run of blank lines from each line start
    ("blank_lines_assign", '= "' + "\n" * (N - 3), 10),
    # a legend mapping a one-letter code word to a 1,000-letter word multiplied the text 500-fold
    ("legend_expansion", rep('"a" means "' + "b" * 1000 + '"\n\n' + "a " * 9000), 10),
    # NFKC turns U+FDFA into 18 characters; the folded view was not cut to the window. Normalising
    # the whole input is linear but makes 9.5 times as much text, so about 10 times the prose's
    # time is expected here (measured 9-11 on the 2-core machine): the bug was hundreds of times
    ("nfkc_expansion", rep("\ufdfa\uff41"), 30),
    # the layout and encoding views (twenty-sixth session): junk shaped like each of their inputs. Text
    # that several decoders each rewrite whole fills all eight views with full windows, and stage 1 reads
    # each: up to about ten times the prose's time is expected, as for NFKC (measured 15-25)
    ("joined_words", rep("qwertzuiopasdfghjklyxcvbnm" * 3 + " "), 10),
    ("markup_spam", rep("**a** _b_ `c` <b>d</b> ~~e~~ "), 10),
    ("entities_and_escapes", rep("&#65; &amp; \\u0041 \\x41 =41 "), 30),
    ("char_codes", rep("72 101 108 108 111 9 "), 10),
    ("quoted_lists", rep('["a", "b", "c", "d"] '), 10),
    ("base32_ascii85", rep("JBSWY3DPEBLW64TMMQQQ==== <~87cURD]i,\"Ebo80~> "), 30),
    ("braille_and_doubles", rep("⠓⠑⠇⠇⠕ ⠠⠺ hheelllloo "), 10),
    # pig latin and acrostics (twenty-seventh session): every word ending in -ay; a line a letter
    ("pig_latin", rep("owhay oday iway akemay away ayay "), 10),
    ("acrostic_lines", rep("Hushed hills\nOak trees\nWaves roll\n"), 10),
    # optimiser-style token soup (twenty-eighth session): its own view weighs the tokens at both ends of a
    # window only (5 ms here); the soup's glued capitals and markup make the unscrambled and markup views
    # rewrite the whole window, as before the soup view (measured 13-14 times the prose's time either way)
    ("token_soup", rep("describing.\\ + similarlyNow ]( giving**ONE <!-- == "), 30),
])
def test_adversarial_input_is_not_much_slower_than_prose(guard: Guard, name: str, text: str, bound: float) -> None:
    base, t = _stage1_times(guard, text)
    assert t / base < bound, f"{name}: {t * 1000:.1f} ms against {base * 1000:.1f} ms for prose"


def test_payload_split_regex_is_linear_in_blank_lines() -> None:
    small, big = '= "' + "\n" * 5000, '= "' + "\n" * 20000
    ratio = best_of(lambda: decode_payload_split(big)) / best_of(lambda: decode_payload_split(small))
    assert ratio < 10  # linear: about 4; the quadratic regex: about 16
    assert decode_payload_split('a = "how to "\n\n\n  b = "bake bread"\n') == "how to bake bread"


def test_legend_and_fold_views_stay_within_max_len() -> None:
    text = '"a" means "' + "b" * 1000 + '"\n\n' + "a " * 5000
    assert len(apply_legend(text, 20_000) or "") == 20_000
    assert apply_legend('"x" means "bread"\n\nbake x', 20_000) == apply_legend('"x" means "bread"\n\nbake x')
    assert all(len(v) <= 20_000 for _, v in views(text))
    assert all(len(v) <= 1000 for _, v in views(rep("\ufdfa\uff41", 1000), max_len=1000))
    assert len(fold_all("\ufdfa" * 100, 50)) == 50


def test_stream_cost_per_token_does_not_grow_with_an_unfinished_word(guard: Guard) -> None:
    """A word streamed in many chunks was rescanned from its start at every chunk."""
    def per_token(chunks: list[str]) -> float:
        s = ExchangeStream(guard.exchange, "hello")
        t0 = time.perf_counter()
        for c in chunks:
            s.feed(c)
        return (time.perf_counter() - t0) / len(chunks)

    n = 30_000
    words = [w + " " for w in rep(PROSE, 6 * n).split(" ")][:n]
    per_token(words[:2000])  # warm up
    base = min(per_token(words) for _ in range(2))
    long_word = min(per_token(["abcdefgh"] * n) for _ in range(2))
    assert long_word / base < 5, f"{long_word * 1e6:.1f} µs against {base * 1e6:.1f} µs per prose token"


def test_stream_word_pieces_score_like_whole_words(guard: Guard) -> None:
    text = "Sure, here is how: mix the flour_and water 123 héllo wörld... then bake"
    whole = ExchangeStream(guard.exchange, "hi")
    whole.feed(text)
    for size in (1, 2, 3, 7):
        s = ExchangeStream(guard.exchange, "hi")
        for i in range(0, len(text), size):
            s.feed(text[i : i + size])
        assert s._n == whole._n
        assert s.score == pytest.approx(whole.score, abs=1e-6)
