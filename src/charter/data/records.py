"""The record every generator emits and every trainer reads (one JSON object per JSONL line)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Label = Literal["restricted", "permitted"]
RecordKind = Literal["input", "exchange"]
Split = Literal["train", "calib", "test"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


def render_messages(messages: list[Message] | list[dict]) -> str:
    """A conversation as one string, the form every classifier sees."""
    parts = []
    for m in messages:
        role, content = (m.role, m.content) if isinstance(m, Message) else (m.get("role", "user"), m.get("content", ""))
        if not isinstance(content, str):  # OpenAI content parts: keep the text ones
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        parts.append(f"{role}: {content}")
    return "\n".join(parts)


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
