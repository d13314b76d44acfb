"""Load a constitution from YAML, reporting errors as ``file:line: field: message``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from charter.constitution.model import Constitution
from charter.errors import ConstitutionError
from charter.yamlsource import load_mapping, problems_of, read_text, report

MAX_BYTES = 16 * 1024 * 1024


def default_constitution_path() -> Path:
    """The default constitution packaged with Charter (the repo's constitutions/default.yaml)."""
    return Path(str(resources.files("charter") / "constitutions" / "default.yaml"))


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    root, data = load_mapping(text, source, ConstitutionError, "constitution")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        raise ConstitutionError(report(source, root, problems_of(e))) from None


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution; ``None`` loads the packaged default."""
    p = Path(path) if path is not None else default_constitution_path()
    text = read_text(p, MAX_BYTES, ConstitutionError)
    return parse_constitution(text, source=str(path) if path is not None else str(p))
