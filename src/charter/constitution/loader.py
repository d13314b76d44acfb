"""Load a constitution from YAML, reporting errors as ``file:line: field: message``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from charter.constitution.model import Constitution, seed_key
from charter.errors import ConstitutionError
from charter.yamlsource import Loc, format_loc, load_mapping, problems_of, read_text, report

MAX_BYTES = 16 * 1024 * 1024
#: problems listed in one error; a file with thousands of bad seeds gets the first ones and a count
MAX_REPORTED = 50


def default_constitution_path() -> Path:
    """The default constitution packaged with Charter (the repo's constitutions/default.yaml)."""
    return Path(str(resources.files("charter") / "constitutions" / "default.yaml"))


def _duplicates(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Each repeated domain id, category id, seed request or hard negative, and seed exchange at its own
    location (the model's check can only name the top level)."""
    first: dict[tuple[str, str], str] = {}
    out: list[tuple[Loc, str]] = []

    def see(what: str, key: str, shown: str, loc: Loc) -> None:
        if (what, key) in first:
            out.append((loc, f"{what} {shown!r} is used twice (first at {first[what, key]})"))
        else:
            first[what, key] = format_loc(loc)

    for i, d in enumerate(_items(data.get("domains"))):
        if isinstance(d, dict) and isinstance(d.get("id"), str):
            see("domain id", d["id"], d["id"], ("domains", i, "id"))
        for j, c in enumerate(_items(d.get("categories") if isinstance(d, dict) else None)):
            if not isinstance(c, dict):
                continue
            here: Loc = ("domains", i, "categories", j)
            if isinstance(c.get("id"), str):
                see("category id", c["id"], c["id"], (*here, "id"))
            seeds = c.get("seeds")
            for field, items in (("seeds.requests", seeds.get("requests") if isinstance(seeds, dict) else None),
                                 ("hard_negatives", c.get("hard_negatives"))):
                for k, s in enumerate(_items(items)):
                    text = s.get("text") if isinstance(s, dict) else s
                    if isinstance(text, str) and text.strip():
                        shown = text.strip()[:60] + ("..." if len(text.strip()) > 60 else "")
                        see("seed", seed_key(text), shown, (*here, *field.split("."), k))
            for k, e in enumerate(_items(seeds.get("exchanges") if isinstance(seeds, dict) else None)):
                if isinstance(e, dict) and isinstance(e.get("user"), str) and isinstance(e.get("reply"), str):
                    shown = e["user"].strip()[:40] + " / " + e["reply"].strip()[:40]
                    see("seed exchange", f"{seed_key(e['user'])} / {seed_key(e['reply'])}", shown,
                        (*here, "seeds", "exchanges", k))
    return out


def _items(v: object) -> list[Any]:
    return v if isinstance(v, list) else []


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    root, data = load_mapping(text, source, ConstitutionError, "constitution")
    dups = _duplicates(data)
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        problems = dups + [(loc, msg) for loc, msg in problems_of(e) if not (dups and not loc and "is used twice" in msg)]
        more = len(problems) - MAX_REPORTED
        tail = f"\n{source}: ... and {more} more problems" if more > 0 else ""
        raise ConstitutionError(report(source, root, problems[:MAX_REPORTED]) + tail) from None


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution; ``None`` loads the packaged default."""
    p = Path(path) if path is not None else default_constitution_path()
    text = read_text(p, MAX_BYTES, ConstitutionError)
    return parse_constitution(text, source=str(path) if path is not None else str(p))
