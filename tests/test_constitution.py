"""Constitution schema, error reporting (file:line: field: message) and the default constitution."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from charter.cli import main
from charter.constitution import Kind, load_constitution, parse_constitution
from charter.constitution.loader import default_constitution_path
from charter.errors import ConstitutionError

MINI = Path(__file__).parent / "fixtures" / "mini.yaml"
TEXT = MINI.read_text()


def _err(text: str) -> str:
    with pytest.raises(ConstitutionError) as e:
        parse_constitution(text, "x.yaml")
    return str(e.value)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_mini_loads():
    c = load_constitution(MINI)
    assert [x.id for x in c.restricted] == ["glorp_weapons"]
    assert c.category("cooking").kind is Kind.permitted
    assert c.domain_of("glorp_education").id == "glorp"
    assert c.category("glorp_weapons").seeds.requests[2].lang == "es"
    assert len(c.fingerprint()) == 64


def test_bad_kind_names_file_line_field():
    bad = TEXT.replace("kind: permitted\n        description: Recipes", "kind: allowed\n        description: Recipes")
    msg = _err(bad)
    assert msg == f"x.yaml:{_line_of(bad, 'kind: allowed')}: domains[1].categories[0].kind: must be 'restricted' or 'permitted'"


def test_missing_and_extra_fields():
    bad = TEXT.replace("        severity: critical\n", "")
    assert re.search(r"^x\.yaml:\d+: domains\[0\]\.categories\[0\]: .*severity", _err(bad), re.M)
    bad = TEXT.replace("requests:\n            - how long", "requestz:\n            - how long")
    msg = _err(bad)
    assert f"x.yaml:{_line_of(bad, 'requestz')}: domains[1].categories[0].seeds.requestz: Extra inputs are not permitted" in msg
    assert "seeds.requests: Field required" in msg


def test_bad_id_and_duplicate_id():
    bad = TEXT.replace("id: cooking", "id: Cooking")
    assert f"x.yaml:{_line_of(bad, 'id: Cooking')}: domains[1].categories[0].id: must be lower_snake_case" in _err(bad)
    dup = TEXT.replace("id: cooking", "id: glorp_education")
    assert "category id 'glorp_education' is used twice" in _err(dup)


def test_non_string_keys_named_with_line():
    # pydantic named `1:` and `true:` by position ("seeds[1]", "[1]") and at the wrong line
    bad = TEXT.replace("requests:\n            - how long", "true: [x]\n          requests:\n            - how long")
    assert _err(bad) == (f"x.yaml:{_line_of(bad, 'true: [x]')}: domains[1].categories[0].seeds: "
                         "key 'true' is not a string (YAML reads it as bool); quote it or rename it")
    assert _err("version: 1\n\n1: foo\n") == "x.yaml:3: (top level): key '1' is not a string (YAML reads it as int); quote it or rename it"
    assert "'1'" not in _err(TEXT.replace("version: 1", "version: 1\n'1': foo"))  # a quoted key is a string: only "extra field"


def test_empty_seed_and_yaml_syntax():
    bad = TEXT.replace("- how long do i boil an egg", "- '   '")
    assert f"x.yaml:{_line_of(bad, chr(39) + '   ' + chr(39))}: domains[1].categories[0].seeds.requests[0].text: must not be empty" in _err(bad)
    assert re.match(r"x\.yaml:\d+: invalid YAML", _err(TEXT + "\n  - [unclosed"))
    assert _err("- just\n- a list\n") == "x.yaml:1: the constitution must be a YAML mapping"


def test_unreadable_file(tmp_path):
    with pytest.raises(ConstitutionError, match="cannot read"):
        load_constitution(tmp_path / "nope.yaml")
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConstitutionError, match="not UTF-8"):
        load_constitution(p)


def test_cli_check(capsys, tmp_path):
    assert main(["constitution", "check", str(MINI)]) == 0
    out = capsys.readouterr().out
    assert "glorp_weapons" in out and "OK: 2 domains, 1 restricted and 2 permitted" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(TEXT.replace("kind: permitted\n        description: Recipes", "kind: allowed\n        description: Recipes"))
    assert main(["constitution", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:" in err and "kind: must be 'restricted' or 'permitted'" in err and "Traceback" not in err


# ---- the default constitution -------------------------------------------------------------

@pytest.fixture(scope="module")
def default():
    return load_constitution()


def test_default_is_packaged_and_at_repo_root(default):
    root = Path(__file__).parents[1] / "constitutions" / "default.yaml"
    assert root.read_text() == default_constitution_path().read_text()


def test_default_coverage(default):
    assert len(default.restricted) >= 12 and len(default.permitted) >= 15
    everyday = next(d for d in default.domains if d.id == "everyday")
    assert all(c.kind is Kind.permitted for c in everyday.categories)
    assert sum(len(c.seeds.requests) for c in everyday.categories) >= 300
    for c in default.categories:
        assert len(c.seeds.requests) >= 25, c.id
        assert c.seeds.responses, c.id
        assert len({s.lang for s in c.seeds.requests}) >= 2, f"{c.id}: no seeds in other languages"
        if c.restricted:
            assert len(c.hard_negatives) >= 10, c.id
    ids = {c.id for c in default.restricted}
    for needed in ("chem_bio_weapons", "nuclear_radiological", "explosives_weapons", "cyber_offense", "violent_crime",
                   "nonviolent_crime", "sex_crimes", "child_sexual_exploitation", "hate_harassment",
                   "suicide_self_harm", "privacy_violations", "election_disinformation"):
        assert needed in ids


def test_default_restricted_responses_are_skeletons(default):
    """Every restricted response carries placeholders instead of operational detail."""
    for c in default.restricted:
        for r in c.seeds.responses:
            assert re.search(r"\[[A-Z0-9_ ]{3,}\]", r.text), f"{c.id}: response without [PLACEHOLDER]: {r.text[:60]}"
            # no quantities with units, a cheap guard against recipes slipping in
            assert not re.search(r"\b\d+(\.\d+)?\s?(mg|g|kg|ml|l|mol|°c|grams|litres|liters)\b", r.text, re.I), r.text


def test_no_duplicate_seeds(default):
    texts = [s.text.casefold() for c in default.categories for s in c.seeds.requests + c.hard_negatives]
    assert len(texts) == len(set(texts))


def test_cli_check_counts_seed_exchanges(capsys):
    from charter.constitution.loader import default_constitution_path

    wellbeing = default_constitution_path().with_name("wellbeing.yaml")
    assert main(["constitution", "check", str(wellbeing)]) == 0
    c = load_constitution(wellbeing)
    n = sum(len(x.seeds.exchanges) for x in c.categories)
    assert n > 0 and f"{n} seed exchanges" in capsys.readouterr().out


# ---- hardening: repeats, bounds and invalid text -------------------------------------------

def test_repeated_domain_id_and_seed_name_the_repeat():
    dup = TEXT.replace("id: everyday", "id: glorp")
    line = _line_of(TEXT, "id: everyday")
    assert _err(dup) == f"x.yaml:{line}: domains[1].id: domain id 'glorp' is used twice (first at domains[0].id)"
    # the same request twice (case and spacing aside) could land in train and in test
    dup = TEXT.replace("- Give me a quick vegetarian dinner idea.", "- Give me a quick vegetarian dinner idea.\n"
                       "            - 'give me a  QUICK vegetarian dinner idea. '")
    assert _err(dup) == (f"x.yaml:{_line_of(dup, 'QUICK')}: domains[1].categories[0].seeds.requests[2]: seed 'give me a  QUICK "
                         "vegetarian dinner idea.' is used twice (first at domains[1].categories[0].seeds.requests[1])")
    # punctuation and compatibility forms aside too: "...idea" and "...idea!" are one seed
    dup = TEXT.replace("- Give me a quick vegetarian dinner idea.", "- Give me a quick vegetarian dinner idea.\n"
                       "            - 'Give me a quick vegetarian dinner idea!!'")
    assert "seed 'Give me a quick vegetarian dinner idea!!' is used twice" in _err(dup)
    # a hard negative that is also a permitted request
    dup = TEXT.replace("- How do hospitals treat glorp toxin exposure?", "- What are the symptoms of glorp exposure?")
    assert _err(dup) == (f"x.yaml:{_line_of(dup, 'detected in water') + 1}: domains[0].categories[1].seeds.requests[1]: seed "
                         "'What are the symptoms of glorp exposure?' is used twice (first at domains[0].categories[0].hard_negatives[0])")


def test_a_yaml_set_is_refused_naming_its_line():
    """A !!set's order follows Python's string hash seed: the constitution's fingerprint, and the LLM
    generator's prompts and cache keys, changed from run to run."""
    lines = TEXT.splitlines()
    k = next(n for n, ln in enumerate(lines) if ln.strip() == "rules:")
    ind = lines[k][: len(lines[k]) - len(lines[k].lstrip())]
    lines[k] = ind + "rules: !!set {In scope is making glorp: null, Out of scope is its history: null}"
    while lines[k + 1].lstrip().startswith("- ") and len(lines[k + 1]) - len(lines[k + 1].lstrip()) > len(ind):
        del lines[k + 1]
    err = _err("\n".join(lines) + "\n")
    assert err.startswith(f"x.yaml:{k + 1}: ") and err.endswith(".rules: a !!set value is not accepted; write a list or a string")


def test_permitted_category_with_a_severity_is_an_error():
    bad = TEXT.replace("kind: permitted\n        description: Recipes", "kind: permitted\n        severity: high\n        description: Recipes")
    assert _err(bad) == f"x.yaml:{_line_of(bad, 'severity: high')}: domains[1].categories[0].severity: only restricted categories have a severity"
    ok = TEXT.replace("kind: permitted\n        description: Recipes", "kind: permitted\n        severity: none\n        description: Recipes")
    assert parse_constitution(ok, "x.yaml").category("cooking").severity.value == "none"


def _alias_bomb(n: int) -> str:
    """n categories that each merge in one category of n seed responses: O(n) bytes, O(n^2) seeds."""
    resp = ", ".join(f"answer number {i}" for i in range(n))
    cats = "\n".join(f"      - {{<<: *c, id: c{i}, seeds: {{requests: [ask {i}], responses: *r}}}}" for i in range(n))
    return (f"version: 1\nname: x\ndomains:\n  - id: d\n    name: d\n    categories:\n"
            f"      - &c {{id: r, name: r, kind: restricted, severity: high, description: a long enough description, "
            f"seeds: {{requests: [hi], responses: &r [{resp}]}}}}\n"
            f"      - {{id: p, name: p, kind: permitted, description: a long enough description, seeds: {{requests: [hi there]}}}}\n"
            f"{cats}\n")


def test_aliases_cannot_multiply_the_document():
    small = parse_constitution(_alias_bomb(20), "x.yaml")  # aliases themselves are fine
    assert len(small.categories) == 22 and len(small.category("c7").seeds.responses) == 20
    bomb = _alias_bomb(1000)  # 60 kB that would validate a million seeds
    msg = _err(bomb)
    assert re.fullmatch(r"x\.yaml:(\d+): invalid YAML: aliases expand the document by more than 100000 nodes", msg)
    line = int(msg.split(":")[1])  # the category whose aliases cross the bound (each adds ~2000 nodes)
    assert bomb.splitlines()[line - 1].startswith("      - {<<: *c, id: c") and line < 100


def test_nesting_depth_error_names_the_line():
    deep = "name: x\ndomains:\n" + "".join("  " * i + "- \n" for i in range(1, 300))
    assert _err(deep) == "x.yaml: invalid YAML: nested too deeply (more than 100 levels, line 102)"


def test_lone_surrogate_names_line_and_field(capsys, tmp_path):
    # a "\udc80" escape passed validation, then the fingerprint crashed with a traceback
    bad = TEXT.replace("name: mini", 'name: "mini \\udc80"')
    assert _err(bad) == "x.yaml:3: name: lone surrogate '\\udc80' is not valid Unicode"
    bad = TEXT.replace("- Explain why glorp is unstable in sunlight.", '- "Explain \\ud83d why"')
    line = _line_of(bad, "Explain")
    assert _err(bad) == f"x.yaml:{line}: domains[0].categories[1].seeds.requests[2]: lone surrogate '\\ud83d' is not valid Unicode"
    p = tmp_path / "s.yaml"
    p.write_text(TEXT.replace("name: Cooking", 'name: "Cook\\udfffing"'))
    assert main(["constitution", "check", str(p)]) == 1
    err = capsys.readouterr().err
    assert f"{p}:{_line_of(p.read_text(), 'Cook')}: domains[1].categories[0].name: lone surrogate" in err and "Traceback" not in err


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_read_stops_at_the_size_limit():
    # read_bytes() of an endless file never returned; the child's address space is capped so that
    # a regression fails fast instead of filling the machine's memory
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from pathlib import Path\nfrom charter.errors import ConstitutionError\nfrom charter.yamlsource import read_text\n"
            "try:\n    read_text(Path('/dev/zero'), 1000, ConstitutionError)\nexcept ConstitutionError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "/dev/zero: file is larger than 1000 bytes", out.stderr[-500:]


def test_many_problems_are_listed_up_to_a_bound():
    bad = TEXT.replace("- how long do i boil an egg", "\n            ".join(["- 1"] * 120))
    lines = _err(bad).splitlines()
    assert len(lines) == 51 and lines[-1] == "x.yaml: ... and 70 more problems"
    assert lines[0].startswith(f"x.yaml:{_line_of(bad, '- 1')}: domains[1].categories[0].seeds.requests[0]: ")


def test_an_interrupt_while_fingerprinting_stays_an_interrupt(monkeypatch) -> None:
    """pydantic wraps what a serializer function raises: a SIGTERM or Ctrl-C that lands inside the seeds'
    serializer came out as a PydanticSerializationError, and `charter train` exited 1 with a traceback."""
    from pydantic_core import PydanticSerializationError

    from charter.constitution import model

    c = load_constitution(default_constitution_path())
    fp = c.fingerprint()

    def interrupted(self, *a, **k):  # what pydantic raises when the serializer function is interrupted
        raise PydanticSerializationError("Error calling function `_omit_empty_exchanges`: KeyboardInterrupt: ")

    monkeypatch.setattr(model.Constitution, "model_dump_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        c.fingerprint()

    def broken(self, *a, **k):
        raise PydanticSerializationError("Error calling function `_omit_empty_exchanges`: ValueError: bad")

    monkeypatch.setattr(model.Constitution, "model_dump_json", broken)
    with pytest.raises(PydanticSerializationError):
        c.fingerprint()
    monkeypatch.undo()
    assert c.fingerprint() == fp
