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
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)
