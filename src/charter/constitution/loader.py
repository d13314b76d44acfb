"""Load a constitution from YAML, reporting errors as ``file:line: field: message``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from charter.constitution.model import Constitution
from charter.errors import ConstitutionError
from charter.yamlsource import Loc, format_loc, load_mapping, problems_of, read_text, report

MAX_BYTES = 16 * 1024 * 1024


def default_constitution_path() -> Path:
    """The default constitution packaged with Charter (the repo's constitutions/default.yaml)."""
    return Path(str(resources.files("charter") / "constitutions" / "default.yaml"))


def _duplicate_ids(data: dict[str, Any]) -> list[tuple[Loc, str]]:
    """Each repeated category id at its own location (the model's check can only name the top level)."""
    first: dict[str, str] = {}
    out: list[tuple[Loc, str]] = []
    domains = data.get("domains")
    for i, d in enumerate(domains if isinstance(domains, list) else []):
        cats = d.get("categories") if isinstance(d, dict) else None
        for j, c in enumerate(cats if isinstance(cats, list) else []):
            cid = c.get("id") if isinstance(c, dict) else None
            if not isinstance(cid, str):
                continue
            loc: Loc = ("domains", i, "categories", j, "id")
            if cid in first:
                out.append((loc, f"category id {cid!r} is used twice (first at {first[cid]})"))
            else:
                first[cid] = format_loc(loc)
    return out


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    root, data = load_mapping(text, source, ConstitutionError, "constitution")
    dups = _duplicate_ids(data)
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        problems = [(loc, msg) for loc, msg in problems_of(e) if not (dups and not loc and "is used twice" in msg)]
        raise ConstitutionError(report(source, root, dups + problems)) from None


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution; ``None`` loads the packaged default."""
    p = Path(path) if path is not None else default_constitution_path()
    text = read_text(p, MAX_BYTES, ConstitutionError)
    return parse_constitution(text, source=str(path) if path is not None else str(p))
