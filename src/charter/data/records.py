"""The record every generator emits and every trainer reads (one JSON object per JSONL line)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from os import PathLike
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charter.errors import CharterError

Label = Literal["restricted", "permitted"]
RecordKind = Literal["input", "exchange"]
Split = Literal["train", "calib", "test"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


#: the fields of an OpenAI content part that hold its text (a refusal part carries it under 'refusal')
PART_TEXT = ("text", "refusal")


def part_text(p: Mapping[str, Any]) -> str:
    """What the classifiers read of a content part: its text, and a refusal part's refusal (image,
    audio and file parts carry none)."""
    return "\n".join(t for t in (p.get(k) for k in PART_TEXT) if isinstance(t, str) and t)


def render_messages(messages: list[Message] | list[dict]) -> str:
    """A conversation as one string, the form every classifier sees.

    A lone user message is its bare content: the same text sent as a string or as a one-message
    chat request must score the same.
    """
    parts = []
    for m in messages:
        role, content = (m.role, m.content) if isinstance(m, Message) else (m.get("role", "user"), m.get("content", ""))
        if not isinstance(content, str):  # OpenAI content parts: keep the text ones
            content = " ".join(part_text(p) for p in content if isinstance(p, dict))
        parts.append(f"{role}: {content}")
    if len(messages) == 1 and parts[0].startswith("user: "):
        return parts[0][len("user: "):]
    return "\n".join(parts)


def render_input(messages: list[Message] | list[dict]) -> str:
    """A conversation as the input classifiers read it: every turn but the assistant's.

    Earlier replies are the model's output, which the exchange monitor judges (it reads them as
    context). Read as requests, safe answers on sensitive permitted subjects (harm reduction,
    extremism research, pharmacology) flagged the follow-up turn after them 9.8% of the time.
    """
    asks = [m for m in messages if (m.role if isinstance(m, Message) else m.get("role", "user")) != "assistant"]
    return render_messages(asks or messages)  # type: ignore[arg-type]


#: a JSONL line may hold a whole conversation; the guard reads at most 200,000 characters of one
MAX_LINE_BYTES = 4 * 1024 * 1024


class BlankLine(ValueError):
    pass


def read_jsonl_lines(path: str | PathLike[str], *, max_line_bytes: int | None = MAX_LINE_BYTES,
                     max_bytes: int | None = None, digest: Any = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON or the :class:`ValueError` that line raised) for every line of a
    user's JSONL file, blank ones included (:class:`BlankLine`); an unreadable file is a
    :class:`CharterError`.

    Lines are read in bounded pieces and decoded one by one, so an oversized, non-UTF-8 or too
    deeply nested line spoils that line only. ``max_line_bytes=None``: no bound. ``max_bytes`` bounds
    the whole read, of a pipe too (a CharterError past it); ``digest`` (a hashlib object) is fed every
    byte read, so that a pipe, or a file rewritten meanwhile, is hashed as it was read.
    """
    cap = -1 if max_line_bytes is None else max_line_bytes + 1
    seen = 0

    def count(raw: bytes) -> None:
        nonlocal seen
        seen += len(raw)
        if max_bytes is not None and seen > max_bytes:
            raise CharterError(f"{path}: more than {max_bytes} bytes; at most {max_bytes} are read (split or sample it)")
        if digest is not None:
            digest.update(raw)

    try:
        with open(path, "rb") as f:
            i = 0
            while raw := f.readline(cap):
                i += 1
                count(raw)
                if max_line_bytes is not None and len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    while rest := f.readline(1 << 20):  # skip the rest of the oversized line
                        count(rest)
                        if rest.endswith(b"\n"):
                            break
                    yield i, ValueError(f"line is longer than {max_line_bytes} bytes")
                    continue
                try:  # a byte-order mark (editors on Windows write one) is not part of the first record
                    line = (raw[3:] if i == 1 and raw.startswith(b"\xef\xbb\xbf") else raw).decode("utf-8")
                except UnicodeDecodeError as e:
                    yield i, ValueError(f"not UTF-8 (byte {e.start})")
                    continue
                if not line.strip():
                    yield i, BlankLine("blank line")
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, ValueError(f"not JSON ({e.msg} at column {e.colno})")
                except RecursionError:
                    yield i, ValueError("JSON nested too deeply")
                except ValueError as e:  # e.g. an integer of more digits than Python converts
                    yield i, ValueError(f"not JSON ({str(e).splitlines()[0]})")
    except OSError as e:
        raise CharterError(f"{path}: {e.strerror}") from None


def line_id(line: int, obj: Any) -> str | int:
    """A JSONL line's ``id`` when it has one (a string or an integer; else ValueError), or its line number."""
    if isinstance(obj, dict) and obj.get("id") is not None:
        if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
            raise ValueError("'id' must be a string or an integer")
        return obj["id"]
    return line


def iter_jsonl(path: str | PathLike[str], *, max_lines: int | None = None, max_line_bytes: int | None = None,
               max_bytes: int | None = None, digest: Any = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a JSONL file, read as it is consumed.

    An unreadable file, a line that is not UTF-8 or not JSON (or longer than ``max_line_bytes``),
    or more than ``max_lines`` non-blank lines is a :class:`CharterError` naming the file (and the line).
    """
    n = 0
    for i, obj in read_jsonl_lines(path, max_line_bytes=max_line_bytes, max_bytes=max_bytes, digest=digest):
        if isinstance(obj, BlankLine):
            continue
        if max_lines is not None and n >= max_lines:
            raise CharterError(f"{path}: more than {max_lines} lines; sample it first")
        n += 1
        if isinstance(obj, ValueError):
            raise CharterError(f"{path}:{i}: {obj}")
        yield i, obj


class Record(BaseModel):
    """One training or evaluation example.

    ``kind="input"`` records are user requests (``text``, or ``messages`` for a conversation).
    ``kind="exchange"`` records add the assistant ``response``; their ``label`` is the label of
    the *exchange*: a restricted request answered with a refusal is ``permitted``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    text: str | None = None
    messages: list[Message] | None = None
    response: str | None = None
    label: Label
    category: str
    kind: RecordKind
    transforms: list[str] = Field(default_factory=list)
    seed_id: str
    split: Split = "train"
    #: presentation format: question, instruction, conversation, document, email, code, ...
    format: str = "question"
    lang: str = "en"
    #: where the record came from: seed, hard_negative, refusal, llm, user, ...
    source: str = "seed"

    def prompt_text(self) -> str:
        """The user side as one string (conversations joined turn by turn)."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        return render_messages(self.messages)

    def input_text(self) -> str:
        """What the input classifiers read of the request (:func:`render_input` for a conversation)."""
        if self.text is not None:
            return self.text
        assert self.messages is not None
        return render_input(self.messages)
