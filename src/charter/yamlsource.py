"""YAML files that users write (constitutions, safety-case configs, the proxy's and the monitor's
configs): bounded reads, and parse or validation errors reported as ``file:line: field: message``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from charter.errors import CharterError

Loc = tuple[int | str, ...]


def read_text(path: Path, max_bytes: int, error: type[CharterError]) -> str:
    """The file's UTF-8 text; an unreadable, oversized or non-UTF-8 file raises ``error``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: file is larger than {max_bytes} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 (byte {e.start})") from None


def load_mapping(text: str, source: str, error: type[CharterError], what: str) -> tuple[yaml.Node, dict[str, Any]]:
    """(composed node tree, data) of a YAML document whose top level must be a mapping."""
    root, data = load_optional_mapping(text, source, error, what)
    if root is None:
        raise error(f"{source}:1: the {what} must be a YAML mapping")
    return root, data


def load_optional_mapping(text: str, source: str, error: type[CharterError], what: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    """Like :func:`load_mapping`, but an empty document (or one of comments) is ``(None, {})``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise error(f"{source}:{mark.line + 1 if mark else 0}: invalid YAML: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise error(f"{source}: invalid YAML: {e}") from None
    except RecursionError:  # PyYAML composes recursively
        raise error(f"{source}: invalid YAML: nested too deeply") from None
    if root is None:
        return None, {}
    if not isinstance(data, dict):
        raise error(f"{source}:1: the {what} must be a YAML mapping")
    dup = _duplicate_key(root)
    if dup is not None:  # PyYAML would silently keep the last value
        raise error(f"{source}:{dup.start_mark.line + 1}: duplicate key {dup.value!r}")
    return root, data


def _duplicate_key(root: yaml.Node) -> yaml.ScalarNode | None:
    """The first repeated scalar key of any mapping in the tree (walked iteratively, each node once)."""
    todo, seen = [root], set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if (k.tag, k.value) in keys:
                        return k
                    keys.add((k.tag, k.value))
                todo.append(v)
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(node.value)
    return None


def problems_of(e: ValidationError) -> list[tuple[Loc, str]]:
    """(data path, message) of each pydantic error, without pydantic's union/function tags."""
    return [(useful_loc(tuple(x["loc"])), x["msg"].removeprefix("Value error, ")) for x in e.errors()]


def report(source: str, root: yaml.Node | None, problems: list[tuple[Loc, str]]) -> str:
    """One ``file:line: field: message`` line per problem (no line for an empty document)."""
    return "\n".join(f"{source}{f':{line_at(root, loc)}' if root is not None else ''}: {format_loc(loc) or '(top level)'}: {msg}"
                     for loc, msg in problems)


def line_at(root: yaml.Node, loc: Loc) -> int:
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


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def useful_loc(loc: Loc) -> Loc:
    # pydantic adds union/function tags such as 'function-after[...]'; keep only data paths
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and "-" not in p))
