from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from charter.cli import main
from charter.constitution import load_constitution
from charter.constitution.model import Constitution
from charter.data.hygiene import clean, dedup_exact, dedup_near, normalise, record_text
from charter.data.offline import OfflineGenerator, registered_transforms
from charter.data.pipeline import build_dataset, generate_to_dir, read_records
from charter.data.records import Record, iter_jsonl
from charter.errors import CharterError
from charter.data.skeleton import render_skeleton
from charter.data.splits import split_of


def transforms() -> list:
    """The built-in transform library (an import failure fails the tests, never hides them)."""
    got = registered_transforms()
    assert got, "no transforms registered"
    return got


def gen() -> OfflineGenerator:
    return OfflineGenerator(transforms=transforms())


@pytest.fixture
def mini(mini_path: Path) -> Constitution:
    return load_constitution(mini_path)


@pytest.fixture
def wide(mini: Constitution) -> Constitution:
    """mini with many (fictional) seeds so that every split has seeds."""
    data = mini.model_dump(mode="json")
    for d in data["domains"]:
        for cat in d["categories"]:
            verbs = ["make", "store", "find", "test", "describe", "move", "label", "measure", "sell", "study", "count", "clean"]
            cat["seeds"]["requests"] += [
                {"text": f"Can you tell me how to {v} {cat['name'].lower()} item number {i}?"} for i, v in enumerate(verbs)
            ]
            if cat["kind"] == "restricted":
                cat["hard_negatives"] += [{"text": f"What is the safety history of glorp site {i} in {v} terms?"} for i, v in enumerate(verbs)]
    return Constitution.model_validate(data)


def test_same_seed_same_bytes_and_different_seed_differs(mini_path: Path, tmp_path: Path) -> None:
    c = load_constitution(mini_path)
    for name, s in (("a", 3), ("b", 3), ("c", 4)):
        generate_to_dir(mini_path, c, gen(), tmp_path / name, 1500, s)
    a, b, c2 = ((tmp_path / x / "data.jsonl").read_bytes() for x in "abc")
    assert a == b
    assert a != c2
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert ma["data"]["sha256"] == json.loads((tmp_path / "b" / "manifest.json").read_text())["data"]["sha256"]


def test_coverage_of_categories_labels_kinds_families(mini: Constitution) -> None:
    g = gen()
    ds = build_dataset(mini, g, 3000, 0)
    recs = ds.records
    fam = g.transform_families()
    assert {r.category for r in recs} == {c.id for c in mini.categories}
    for label in ("restricted", "permitted"):
        for kind in ("input", "exchange"):
            assert any(r.label == label and r.kind == kind for r in recs), (label, kind)
        fams = {fam[t] for r in recs if r.label == label for t in r.transforms}
        assert fams == set(g.families), label  # wrappers and encodings on both labels
    sources = {r.source for r in recs}
    assert {"seed", "hard_negative", "refusal", "over_refusal"} <= sources
    assert {"question", "instruction", "conversation", "document", "email", "code"} <= {r.format for r in recs}
    # hard negatives are permitted records in a permitted category of the same domain
    for r in recs:
        cat = mini.category(r.category)
        if r.source == "seed":
            assert (r.label == "restricted") == cat.restricted
        if r.source == "hard_negative":
            assert r.label == "permitted" and not cat.restricted
            assert mini.domain_of(r.category).id == mini.domain_of(r.seed_id.split(":")[0]).id
    restricted_inputs = sum(r.label == "restricted" for r in recs if r.kind == "input")
    assert 0.35 <= restricted_inputs / sum(r.kind == "input" for r in recs) <= 0.55
    transformed = sum(bool(r.transforms) for r in recs) / len(recs)
    assert 0.2 <= transformed <= 0.5
    # conversation transforms produce messages
    conv = {t.name for t in transforms() if hasattr(t, "apply_messages")}
    assert conv and any(r.messages and set(r.transforms) & conv for r in recs)


def test_requests_come_behind_system_prompts_of_their_own_split(wide: Constitution) -> None:
    """A share of requests (``system_prompts``, 10% by default) is asked behind an operator's system
    prompt, as deployed models are: both labels come behind them (they say nothing of the user's intent),
    and the held-out splits' prompts are never trained on."""
    from charter.data.templates import SYSTEM_PROMPTS

    none = OfflineGenerator(transforms=transforms(), system_prompts=0.0)
    assert not any(r.messages and r.messages[0].role == "system" for r in build_dataset(wide, none, 1000, 0).records)
    recs = build_dataset(wide, gen(), 4000, 0).records
    behind = [r for r in recs if r.messages and r.messages[0].role == "system"]
    assert {r.label for r in behind} == {"restricted", "permitted"} and {r.kind for r in behind} == {"input", "exchange"}
    assert 0.08 <= len(behind) / len(recs) <= 0.25
    one_turn = [r for r in behind if r.format == "system"]
    assert one_turn and all([m.role for m in r.messages] == ["system", "user"] for r in one_turn)
    assert any(len(r.messages) > 2 and r.format == "conversation" for r in behind)
    by_split = {s: {r.messages[0].content for r in behind if r.split == s} for s in ("train", "calib", "test")}
    assert all(by_split.values()) and not (by_split["train"] & (by_split["calib"] | by_split["test"]))
    assert not by_split["calib"] & by_split["test"] and set().union(*by_split.values()) <= set(SYSTEM_PROMPTS)
    # the user turn is the request itself: the input classifiers read the system prompt and the ask
    r = one_turn[0]
    assert r.input_text() == f"system: {r.messages[0].content}\nuser: {r.messages[1].content}"


def test_replies_never_borrow_another_splits_response_seeds(mini: Constitution) -> None:
    """Where a split has none of a category's response seeds (small constitutions), its replies fall
    back to generic ones: borrowing all the seeds put test replies in training."""
    recs = build_dataset(mini, gen(), 1500, 0).records
    for cat in mini.categories:
        for i, seed in enumerate(cat.seeds.responses):
            if "[" in seed.text:
                continue  # a skeleton is rendered; its text is not found verbatim
            used = {r.split for r in recs if r.response and seed.text in r.response}
            assert used <= {split_of(f"{cat.id}:resp:{i}")}, (cat.id, i, used)


def test_skeletons_are_rendered_without_brackets_and_permitted_answers_have_steps(mini: Constitution) -> None:
    recs = build_dataset(mini, gen(), 3000, 0).records
    skel = [r for r in recs if r.kind == "exchange" and r.label == "restricted"]
    assert skel and not any(re.search(r"\[[A-Z_0-9]+\]", r.response or "") for r in skel)
    assert any("precursor" in (r.response or "") for r in skel)
    benign = [r.response or "" for r in recs if r.kind == "exchange" and r.label == "permitted" and r.source == "seed"]
    assert any(re.search(r"(Step 2|^2\. |\n2\. | 2\) )", b) for b in benign)
    lengths = {len(r.response or "") for r in skel}
    assert max(lengths) > 1.5 * min(lengths)
    assert render_skeleton("get [MATERIAL_2] then [PROCESS_STEP]", __import__("random").Random(0)).count("[") == 0
    assert "second material" in render_skeleton("[MATERIAL_2]", __import__("random").Random(1))


def test_every_marker_in_the_default_constitution_renders_without_brackets() -> None:
    """Markers in any script (``[MÉTODO_DE_PAGO]``) and with a description (``[REDACTED_CODE: file
    enumeration]``) render too: brackets left only in restricted replies would be a shortcut."""
    import random

    from charter.constitution.loader import default_constitution_path, load_constitution

    rng = random.Random(0)
    assert render_skeleton("usa [MÉTODO_DE_PAGO] y [REDACTED_CODE: file enumeration]", rng).count("[") == 0
    assert render_skeleton("the [substrate] and [0] and [ ] box", rng) == "the [substrate] and [0] and [ ] box"
    left = []
    for cat in load_constitution(default_constitution_path()).categories:
        for seed in cat.seeds.responses:
            out = render_skeleton(seed.text, rng)
            left += [(cat.id, m) for m in re.findall(r"\[[A-ZÀ-Þ][A-ZÀ-Þ0-9_ '’\-]*(?::[^\]\n]*)?\]", out)]
    assert left == []


def test_splits_by_seed_without_leakage(wide: Constitution) -> None:
    recs = build_dataset(wide, gen(), 4000, 1).records
    by_split: dict[str, set[str]] = defaultdict(set)
    for r in recs:
        assert r.split == split_of(r.seed_id)
        by_split[r.split].add(r.seed_id)
    assert by_split["train"] and by_split["test"] and by_split["calib"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["calib"] & by_split["test"]
    train_norm = {normalise(r.prompt_text()) for r in recs if r.split == "train"}
    assert not any(normalise(r.prompt_text()) in train_norm for r in recs if r.split == "test")


def test_holdout_families_only_in_test(wide: Constitution, tmp_path: Path) -> None:
    g = gen()
    held = sorted(g.families)[:2]
    recs = build_dataset(wide, g, 4000, 2, holdout=frozenset(held)).records
    fam = g.transform_families()
    uses_held = [r for r in recs if any(fam[t] in held for t in r.transforms)]
    assert uses_held, "held-out families still appear in the test split"
    assert all(r.split == "test" for r in uses_held)
    assert {fam[t] for r in uses_held for t in r.transforms} >= set(held)


def _rec(i: int, text: str, split: str = "train") -> Record:
    return Record(id=str(i), text=text, label="permitted", category="cooking", kind="input", seed_id=f"s:{i}", split=split)


def test_exact_and_near_dedup() -> None:
    base = "Could you explain how long it takes to boil an egg so that the yolk is still soft and jammy?"
    recs = [
        _rec(0, base),
        _rec(1, base.upper() + "!!"),  # exact after normalisation
        _rec(2, base.replace("Could you", "Can you")),  # near
        _rec(3, "What's a good vegetarian dinner for a busy weeknight with only a few ingredients?"),
        _rec(4, base.replace("Could you", "Can you"), split="test"),  # other split: kept by near-dedup
    ]
    kept, n_exact = dedup_exact(recs)
    assert n_exact == 2 and [r.id for r in kept] == ["0", "2", "3"]
    kept2, n_near = dedup_near([recs[0], recs[2], recs[3], recs[4]])
    assert n_near == 1 and [r.id for r in kept2] == ["0", "3", "4"]


def test_clean_keeps_the_train_copy_whatever_the_order_and_drops_label_conflicts() -> None:
    base = "Could you explain how long it takes to boil an egg so that the yolk is still soft and jammy?"
    near = base.replace("Could you", "Can you")
    joke = "Tell me a joke about cats."
    recs = [
        _rec(0, base.upper() + "!!", split="test"),  # exact copy of the train record 2, before it
        _rec(1, near, split="calib"),  # near copy of 2, before it
        _rec(2, base),
        _rec(3, "What's a good vegetarian dinner for a busy weeknight with only a few ingredients?", split="test"),
        _rec(4, base + "?"),  # a train repeat: an ordinary exact duplicate
        _rec(5, base.replace("jammy", "runny"), split="test").model_copy(
            update={"label": "restricted", "category": "glorp_weapons"}),  # near 2, but the other label: kept
        _rec(6, joke),
        _rec(7, joke.lower(), split="test").model_copy(update={"label": "restricted", "category": "glorp_weapons"}),
    ]
    kept, dropped = clean(recs)
    assert [r.id for r in kept] == ["2", "3", "5"]
    assert dropped == {"exact_duplicates": 1, "near_duplicates": 0, "label_conflicts": 2,
                       "held_out_exact_duplicates_of_train": 1, "held_out_near_duplicates_of_train": 1}
    assert clean(recs[2:3] + recs[:2])[0] == [recs[2]]  # the same with the train record first


def test_pipeline_dedups_injected_duplicates(mini: Constitution) -> None:
    class Dupes(OfflineGenerator):
        def generate(self, constitution, n, seed, holdout=frozenset()):  # type: ignore[no-untyped-def]
            for r in super().generate(constitution, n, seed, holdout):
                yield r
                yield r.model_copy(update={"id": r.id + "-dup", "text": (r.text or "").upper() or None})

    plain = build_dataset(mini, gen(), 600, 5)
    dup = build_dataset(mini, Dupes(transforms=transforms()), 600, 5)
    assert dup.dropped["exact_duplicates"] >= plain.dropped["exact_duplicates"] + 500
    norms = [(r.label, r.kind, normalise(record_text(r))) for r in dup.records]
    assert len(norms) == len(set(norms))


def test_a_retried_generation_reports_the_stats_of_the_run_that_made_the_data(mini: Constitution) -> None:
    """A run short of n is retried with a larger target; its stats were summed over every attempt."""
    class Counting(OfflineGenerator):
        calls = 0

        def generate(self, constitution, n, seed, holdout=frozenset()):  # type: ignore[no-untyped-def]
            Counting.calls += 1
            self.stats["calls"] += 1
            yield from super().generate(constitution, min(n, 200), seed, holdout)  # always short of n

    g = Counting(transforms=transforms())
    build_dataset(mini, g, 1000, 5)
    assert Counting.calls == 3 and g.stats["calls"] == 1


def test_manifest_counts_match_the_file_and_cli(mini_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["generate", "--constitution", str(mini_path), "--out", str(out), "--n", "1200", "--seed", "9"]) == 0
    recs = read_records(out / "data.jsonl")
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_records"] == len(recs)
    for key in ("category", "label", "kind", "split", "format", "lang", "source"):
        expect: dict[str, int] = defaultdict(int)
        for r in recs:
            expect[getattr(r, key)] += 1
        assert m["counts"][key] == dict(expect), key
    import hashlib

    assert m["data"]["sha256"] == hashlib.sha256((out / "data.jsonl").read_bytes()).hexdigest()
    assert m["constitution"]["sha256"] == hashlib.sha256(mini_path.read_bytes()).hexdigest()
    assert m["constitution"]["fingerprint"] == load_constitution(mini_path).fingerprint()
    assert m["generator"]["name"] == "offline" and m["seed"] == 9
    assert m["class_balance"]["all"]["restricted"] == sum(r.label == "restricted" for r in recs)
    d = m["dropped"]
    assert sum(d.values()) == m["n_generated"] - len(recs)
    assert len(recs) <= m["n_requested"]
    assert len(m["code_version"]) == 64
    assert "wrote" in capsys.readouterr().err


def test_cli_rejects_unknown_holdout_family(mini_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--constitution", str(mini_path), "--out", str(tmp_path), "--n", "100", "--holdout-families", "nope"]) == 2  # a usage error
    assert "nope" in capsys.readouterr().err


def test_dedup_keeps_distinct_texts_made_of_punctuation() -> None:
    """Morse code is all punctuation: two different Morse requests are not duplicates."""
    recs = [_rec(0, ".- ... / .- / .--. .- .-. . -. -"), _rec(1, "-.-- --- --..-- / .. .----. --"),
            _rec(2, ".- ...  /  .-  / .--. .- .-. . -. -"), _rec(3, "Hello, world!"), _rec(4, "hello world")]
    kept, dropped = dedup_exact(recs)
    assert [r.id for r in kept] == ["0", "1", "3"] and dropped == 2
    assert normalise("Hello,   World!") == "helloworld" and normalise(".-  ...") == ".- ..."


def test_reply_openers_do_not_carry_the_label(mini: Constitution) -> None:
    """Harmful and harmless replies open with the same phrases: a label-specific opener taught the
    exchange classifier to flag every benign reply that began "Sure, here you go."."""
    from charter.data import templates as T

    recs = [r for r in build_dataset(mini, gen(), 4000, 0).records if r.kind == "exchange"]
    intros = sorted((i for i in T.REPLY_INTROS if i), key=len, reverse=True)

    def opener(text: str) -> str | None:
        return next((i for i in intros if text.startswith(i)), None)

    used = {lab: {opener(r.response or "") for r in recs if r.label == lab} - {None} for lab in ("restricted", "permitted")}
    assert "Sure, here you go." in used["restricted"]
    assert used["restricted"] <= used["permitted"], used["restricted"] - used["permitted"]


def test_restricted_requests_answered_safely_are_harmless_exchanges(mini: Constitution) -> None:
    from charter.data import templates as T

    recs = build_dataset(mini, gen(), 4000, 0).records
    restricted_cats = {c.id for c in mini.restricted}
    safe = [r for r in recs if r.source == "safe_answer"]
    assert safe and all(r.kind == "exchange" and r.label == "permitted" for r in safe)
    assert all(r.seed_id.split(":")[0] in restricted_cats and r.seed_id.split(":")[1] == "req" for r in safe)
    # they deflect without refusing outright, and never carry skeleton content
    assert all(any((r.response or "").startswith(i) for i in T.SAFE_ANSWER_INTROS) for r in safe)
    assert not any(r.response in T.REFUSALS for r in safe)


def test_test_split_replies_come_from_response_seeds_never_trained_on(wide: Constitution) -> None:
    """Response seeds are split like request seeds: a harmful reply in the test split is built
    from skeletons that no training reply used, so the early-stop metric measures unseen replies."""
    data = wide.model_dump(mode="json")
    restricted = next(c for d in data["domains"] for c in d["categories"] if c["kind"] == "restricted")
    restricted["seeds"]["responses"] = [{"text": f"Step one: get [THING_{i}] from the glorp depot number {i} quietly."}
                                        for i in range(40)]
    const = Constitution.model_validate(data)
    cid = restricted["id"]
    recs = [r for r in build_dataset(const, gen(), 6000, 0).records
            if r.source == "seed" and r.category == cid and r.kind == "exchange" and r.label == "restricted"]
    used: dict[str, set[int]] = defaultdict(set)
    for r in recs:
        used[r.split] |= {int(n) for n in re.findall(r"glorp depot number (\d+)", r.response or "")}
    assert used["train"] and used["test"], dict(used)
    assert not used["train"] & used["test"]
    assert all(split_of(f"{cid}:resp:{i}") == s for s, ids in used.items() for i in ids)
    # replies of several seeds exist: lengths like real replies, not one sentence each
    assert any(len(re.findall(r"glorp depot", r.response or "")) >= 2 for r in recs)


def test_how_to_seeds_take_the_task_register_on_both_labels() -> None:
    """'Write a tutorial on how to ...' is how attackers and benchmarks write; when only restricted
    seeds used it, the register was a label signal and blunt requests on benign-sounding topics slipped."""
    import random

    from charter.data import templates as T
    from charter.data.offline import rewrite_mode

    frames = [f.split("{x}")[0] for f in T.TASK_FRAMES]
    outs = {rewrite_mode(q, random.Random(i)) for i in range(200) for q in ("How do I kill weeds in my lawn?", "best way to gut a fish")}
    assert "Write a tutorial on how to kill weeds in my lawn." in outs
    assert any(o.startswith(tuple(frames)) and o.endswith("gut a fish.") for o in outs)
    assert any(o.startswith(tuple(T.INSTRUCTION_VERBS)) for o in outs)  # the old instruction form stays

    recs = [r for r in build_dataset(load_constitution(), gen(), 6000, 0).records if r.kind == "input" and r.text]
    share = {lab: sum(r.text.startswith(tuple(frames)) for r in recs if r.label == lab) / sum(r.label == lab for r in recs)
             for lab in ("restricted", "permitted")}
    # about one how-to seed in seven, rewritten a sixth of the time: a small share, on both labels alike
    assert min(share.values()) > 0.001 and max(share.values()) < 3 * min(share.values()), share


def test_paraphrases_never_put_a_command_lead_before_a_question() -> None:
    """"Will you can i take ...", "Would you how to ...", "Kindly what's ...": about 4% of requests
    were garbled like this, on both labels, which is text no user writes."""
    import random
    import re

    from charter.data.offline import rewrite_mode

    garbled = re.compile(r"\b(?:can|could|would|will) you (?:please )?(?:can|could|would|will|how|what|whats|what's|why|"
                         r"where|when|who|which|is|are|do|does|i|my)\b|\b(?:kindly|please) (?:can|what|whats|how|i|my)\b", re.I)
    for q in ("can i take my uranium glass on a plane", "how to teach my wife to shoot lol", "whats the best antivirus",
              "my friend works at a bank, how can he spot fraud"):
        outs = {rewrite_mode(q, random.Random(i)) for i in range(100)}
        assert not [o for o in outs if garbled.search(o)], outs
    assert rewrite_mode("Write a short poem about rain.", random.Random(0)).endswith("write a short poem about rain?")
    recs = [r for r in build_dataset(load_constitution(), gen(), 6000, 0).records if r.kind == "input" and r.text]
    bad = [r.text for r in recs if not r.transforms and garbled.search(r.text)]
    assert len(bad) <= 0.002 * len(recs), bad[:10]


@pytest.mark.parametrize("content, message", [
    (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "not UTF-8"),
    (b'{"text": "fine"}\n' + b"[" * 100_000 + b"\n", ":2: JSON nested too deeply"),
    (b'{"text": "fine"}\n{"text": \n', ":2: not JSON"),
])
def test_iter_jsonl_names_the_file_for_unreadable_input(tmp_path: Path, content: bytes, message: str) -> None:
    """User files (red-team benign sets, patch examples) get a CharterError naming the file, not a traceback."""
    f = tmp_path / "in.jsonl"
    f.write_bytes(content)
    with pytest.raises(CharterError, match=re.escape(str(f)) + ".*" + re.escape(message)):
        list(iter_jsonl(f))



def test_the_red_teams_jailbreak_templates_never_reach_training_data() -> None:
    """The model card's wrapped rows and the red team measure wrappers the guard never trained on: the
    data engine draws wrappers only from its transforms' own templates, never from ATTACK_TEMPLATES."""
    import re

    from charter.data.records import render_messages
    from charter.transforms.wrappers import ATTACK_TEMPLATES, TemplateTransform

    def chunks(templates) -> set[str]:  # each template's longest literal run between slots
        return {max(re.split(r"\{\w+\}", t), key=len).strip() for t in templates}

    attack = chunks(t for ts in ATTACK_TEMPLATES.values() for t in ts)
    own = chunks(t for cls in registered_transforms() if issubclass(cls, TemplateTransform) for t in cls.templates)
    assert attack and not attack & own
    recs = build_dataset(load_constitution(), gen(), 6000, 0).records
    texts = [r.text or render_messages(r.messages or []) for r in recs if r.kind == "input"]
    blob = "\n".join(texts)
    assert sum(c in blob for c in own) > len(own) // 2  # the check sees wrappers: the engine's own are there
    assert [c for c in attack if c in blob] == []
