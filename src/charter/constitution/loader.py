"""Load a constitution from YAML, reporting errors as ``file:line: field: message``."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from charter.constitution.model import Constitution
from charter.errors import ConstitutionError

MAX_BYTES = 16 * 1024 * 1024


def default_constitution_path() -> Path:
    """The default constitution packaged with Charter (the repo's constitutions/default.yaml)."""
    return Path(str(resources.files("charter") / "constitutions" / "default.yaml"))


def _line_at(root: yaml.Node, loc: tuple[int | str, ...]) -> int:
    """1-based line of a pydantic error location in the composed YAML tree.

    A mapping entry is reported at its key's line; a missing field at its parent's line.
    """
    node, mark = root, root.start_mark
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if pair:
                nxt, mark = pair[1], pair[0].start_mark
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
            mark = nxt.start_mark
        if nxt is None:
            break
        node = nxt
    return mark.line + 1


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _useful_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    # pydantic adds union/function tags such as 'function-after[...]'; keep only data paths
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "-" not in p))


def parse_constitution(text: str, source: str = "<string>") -> Constitution:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        raise ConstitutionError(f"{source}:{line}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise ConstitutionError(f"{source}: invalid YAML: {e}") from None
    if root is None or not isinstance(data, dict):
        raise ConstitutionError(f"{source}:1: the constitution must be a YAML mapping")
    try:
        return Constitution.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = _useful_loc(tuple(err["loc"]))
            line = _line_at(root, loc)
            msg = err["msg"].removeprefix("Value error, ")
            field = _format_loc(loc) or "(top level)"
            lines.append(f"{source}:{line}: {field}: {msg}")
        raise ConstitutionError("\n".join(lines)) from None


def load_constitution(path: str | Path | None = None) -> Constitution:
    """Load and validate a constitution; ``None`` loads the packaged default."""
    p = Path(path) if path is not None else default_constitution_path()
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConstitutionError(f"{p}: cannot read: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConstitutionError(f"{p}: file is larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConstitutionError(f"{p}: not UTF-8 (byte {e.start})") from None
    return parse_constitution(text, source=str(path) if path is not None else str(p))
