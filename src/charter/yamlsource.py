"""YAML files that users write (constitutions, safety-case configs, the proxy's and the monitor's
configs): bounded reads, and parse or validation errors reported as ``file:line: field: message``."""

from __future__ import annotations

import bisect
import collections
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from charter.errors import CharterError

Loc = tuple[int | str, ...]


#: nesting deeper than this is refused (no file Charter reads needs a tenth of it)
MAX_DEPTH = 100
#: aliases may add at most this many nodes to the document (each use counts the aliased subtree)
MAX_ALIAS_NODES = 100_000


def read_text(path: Path, max_bytes: int, error: type[CharterError]) -> str:
    """The file's UTF-8 text; an unreadable, oversized or non-UTF-8 file raises ``error``.

    At most ``max_bytes + 1`` bytes are read, so a huge file or a device never fills memory.
    """
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from None
    if len(raw) > max_bytes:
        raise error(f"{path}: file is larger than {max_bytes} bytes")
    try:
        return raw.decode("utf-8-sig")  # editors on Windows write a byte-order mark
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 (byte {e.start})") from None


def read_json(path: Path, max_bytes: int, error: type[CharterError]) -> Any:
    """The file's JSON (read as :func:`read_text` reads); malformed, too deeply nested or holding an
    integer of more digits than Python converts, it raises ``error`` naming the file (and line)."""
    text = read_text(path, max_bytes, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    except RecursionError:
        raise error(f"{path}: not JSON (nested too deeply)") from None
    except ValueError as e:
        raise error(f"{path}: not JSON ({str(e).splitlines()[0]})") from None


def load_mapping(text: str, source: str, error: type[CharterError], what: str) -> tuple[yaml.Node, dict[str, Any]]:
    """(composed node tree, data) of a YAML document whose top level must be a mapping."""
    root, data = load_optional_mapping(text, source, error, what)
    if root is None:
        raise error(f"{source}:1: the {what} must be a YAML mapping")
    return root, data


class _Deep(yaml.YAMLError):
    def __init__(self, line: int) -> None:
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """Composes with a nesting limit and a bound on what aliases add: a few kilobytes of aliases
    (``&a [*b, *b, ...]``) would otherwise expand into millions of nodes once validated."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._alias_nodes = 0
        self._size: dict[int, int] = {}  # id(node) -> nodes in its expanded subtree

    # PyYAML resolves merge keys (``<<: *base``) by rewriting the mapping nodes in place; the data are
    # built from the composed tree, whose nodes must stay as written (errors report their lines)
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            node = _copy(node)
        return super().construct_mapping(node, deep=deep)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        merge = "tag:yaml.org,2002:merge"
        node.value = [(k, _copy(v) if k.tag == merge and isinstance(v, yaml.MappingNode) else
                       yaml.SequenceNode(v.tag, [_copy(x) if isinstance(x, yaml.MappingNode) else x for x in v.value],
                                         v.start_mark, v.end_mark) if k.tag == merge and isinstance(v, yaml.SequenceNode)
                       else v) for k, v in node.value]
        super().flatten_mapping(node)

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._alias_nodes += self._size.get(id(node), 1)  # an alias of its own ancestor counts 1
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand the document by more than {MAX_ALIAS_NODES} nodes", mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Deep(self.peek_event().start_mark.line + 1)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            kids = [x for kv in node.value for x in kv]
        else:
            kids = node.value if isinstance(node, yaml.SequenceNode) else []
        self._size[id(node)] = 1 + sum(self._size.get(id(k), 1) for k in kids)
        return node


def _copy(node: yaml.MappingNode) -> yaml.MappingNode:
    return yaml.MappingNode(node.tag, list(node.value), node.start_mark, node.end_mark, node.flow_style)


def _bad_scalar_line(text: str) -> int:
    """The 1-based line of the first scalar that cannot be built into a value (0 if none is found)."""
    stack = collections.deque([_compose(text)])
    while stack:
        node = stack.popleft()
        if isinstance(node, yaml.ScalarNode):
            try:
                yaml.constructor.SafeConstructor().construct_object(node)
            except (ValueError, OverflowError, yaml.YAMLError):
                return node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for kv in node.value for n in kv)
    return 0


def _compose(text: str) -> yaml.Node | None:
    return _compose_and_build(text, build=False)[0]


#: characters PyYAML counts as line breaks and editors (and ``grep -n``) do not
_OTHER_BREAKS = re.compile("[\u2028\u2029\x85]")


class _Lines:
    """Line numbers as editors count them (newlines only) for PyYAML's marks, which also count U+2028,
    U+2029 and U+0085: every line after one of those was reported one too far."""

    def __init__(self, text: str) -> None:
        self.starts = [m.end() for m in re.finditer("\n", text)] if _OTHER_BREAKS.search(text) else None

    def line(self, mark: yaml.Mark) -> int:
        """0-based, as ``mark.line``."""
        return mark.line if self.starts is None else bisect.bisect_right(self.starts, mark.index)

    def fix(self, root: yaml.Node | None) -> None:
        if self.starts is None or root is None:
            return
        todo, seen = [root], set()
        while todo:
            node = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            for mark in (node.start_mark, node.end_mark):
                mark.line = self.line(mark)
            if isinstance(node, yaml.MappingNode):
                todo.extend(x for kv in node.value for x in kv)
            elif isinstance(node, yaml.SequenceNode):
                todo.extend(node.value)


def _compose_and_build(text: str, build: bool = True) -> tuple[yaml.Node | None, Any]:
    """The composed tree and, with ``build``, the data built from that same tree (parsing the text a
    second time cost half of loading the default constitution)."""
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        _Lines(text).fix(root)
        return root, (loader.construct_document(root) if build and root is not None else None)
    finally:
        loader.dispose()


def load_optional_mapping(text: str, source: str, error: type[CharterError], what: str) -> tuple[yaml.Node | None, dict[str, Any]]:
    """Like :func:`load_mapping`, but an empty document (or one of comments) is ``(None, {})``."""
    try:
        root, data = _compose_and_build(text)
    except _Deep as e:
        raise error(f"{source}: invalid YAML: nested too deeply (more than {MAX_DEPTH} levels, line {e.line})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise error(f"{source}:{_Lines(text).line(mark) + 1 if mark else 0}: invalid YAML: {e.problem or e}") from None
    except yaml.reader.ReaderError as e:  # a control character: PyYAML gives its position only
        raise error(f"{source}:{text.count(chr(10), 0, e.position) + 1}: invalid YAML: {e.reason} "
                    f"#x{e.character:04x} (control characters are not allowed; write it escaped in a quoted string)") from None
    except yaml.YAMLError as e:
        raise error(f"{source}: invalid YAML: {e}") from None
    except RecursionError:  # PyYAML composes recursively
        raise error(f"{source}: invalid YAML: nested too deeply") from None
    except (ValueError, OverflowError) as e:  # a scalar PyYAML cannot build: 2020-13-45, !!int abc, a huge integer
        raise error(f"{source}:{_bad_scalar_line(text)}: invalid YAML value: {str(e).splitlines()[0]}") from None
    if root is None:
        return None, {}
    if not isinstance(data, dict):
        raise error(f"{source}:1: the {what} must be a YAML mapping")
    bad = _first_bad_node(root)
    if bad is not None:
        line, msg = bad
        raise error(f"{source}:{line}: {msg}")
    return root, data


_SURROGATE = re.compile("[\ud800-\udfff]")


_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
_UNORDERED_OR_OPAQUE = frozenset(f"tag:yaml.org,2002:{t}" for t in ("set", "binary", "omap", "pairs"))


def _first_bad_node(root: yaml.Node) -> tuple[int, str] | None:
    """(line, message) of the first repeated key (PyYAML would silently keep the last value) or
    lone surrogate (a ``"\\ud800"`` escape: text no UTF-8 writer can encode) in the tree, walked
    iteratively in document order, each node once."""
    todo: list[tuple[yaml.Node, Loc]] = [(root, ())]
    seen: set[int] = set()
    while todo:
        node, loc = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.tag in _UNORDERED_OR_OPAQUE:  # a !!set's order follows the string hash seed: unreproducible
            kind = node.tag.rsplit(":", 1)[1]
            return node.start_mark.line + 1, f"{format_loc(loc) or '(top level)'}: a !!{kind} value is not accepted; write a list or a string"
        if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str):
            m = _SURROGATE.search(node.value)
            if m:
                return node.start_mark.line + 1, f"{format_loc(loc) or '(top level)'}: lone surrogate {m.group()!r} is not valid Unicode"
        elif isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            kids: list[tuple[yaml.Node, Loc]] = []
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else "?"
                if k.tag not in (_STR, _MERGE):  # pydantic reported `1:` or `true:` by position, as `[1]`
                    shown = repr(k.value) if isinstance(k, yaml.ScalarNode) else "a list or mapping"
                    kind = k.tag.rsplit(":", 1)[1] if k.tag.startswith("tag:yaml.org,2002:") else k.tag
                    return k.start_mark.line + 1, (f"{format_loc(loc) or '(top level)'}: key {shown} is not a string "
                                                   f"(YAML reads it as {kind}); quote it or rename it")
                if isinstance(k, yaml.ScalarNode) and k.tag != _MERGE:
                    if (k.tag, k.value) in keys:
                        return k.start_mark.line + 1, f"duplicate key {k.value!r}"
                    keys.add((k.tag, k.value))
                kids += [(k, loc), (v, (*loc, name))]
            todo.extend(reversed(kids))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend(reversed([(v, (*loc, i)) for i, v in enumerate(node.value)]))
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
