"""Constitution schema, error reporting (file:line: field: message) and the default constitution."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

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
