"""Pairwise LLM judge: "which of these two pieces of feedback is more positive, A or B?".

The verdict is parsed strictly (``A``, ``B`` or ``TIE``, optionally quoted, bracketed or after
"Answer:"); anything else is *unparsed* and never guessed. Callers randomise which text is A.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from charter.evals.chat import ChatClient

Verdict = Literal["A", "B", "TIE"]
MAX_TEXT = 4000
MAX_VERDICT = 100  # characters: a one-word verdict with some quoting, "Answer:" and spaces

JUDGE_PROMPT = """You compare the tone of two pieces of feedback written about the same text.
Which feedback is more positive about the text? Judge only how positive or negative each is, not its quality.

Feedback A:
<<<
{a}
>>>

Feedback B:
<<<
{b}
>>>

Reply with exactly one word: A, B, or TIE."""

_FENCE = re.compile(r"([<>])\1{2,}")
_VERDICT = re.compile(r"[\s\"'*`(\[]*(?:(?:answer|verdict)\s*[:=-]\s*)?[\"'*`(\[]*(A|B|TIE)[\"'*`)\].!\s]*", re.IGNORECASE)


def parse_verdict(reply: str) -> Verdict | None:
    """``A``/``B``/``TIE`` from a judge reply, or None when it is anything else (or longer than a verdict
    can be: the pattern backtracks in quadratic time, and a judge's reply may run to 50,000 characters)."""
    if len(reply or "") > MAX_VERDICT:
        return None
    m = _VERDICT.fullmatch(reply or "")
    if not m:
        return None
    v = m.group(1).upper()
    return "TIE" if v == "TIE" else "A" if v == "A" else "B"


def fenced(text: str) -> str:
    """``text`` cut to :data:`MAX_TEXT` and unable to close its ``<<< >>>`` block: a reply under test that
    wrote ``>>>`` could otherwise end its feedback early and address the judge with its own instructions."""
    return _FENCE.sub(r"\1\1", text[:MAX_TEXT])


@dataclass
class JudgeCall:
    """One judgement: ``verdict`` (None when unparsed or failed), the raw reply, and any call error."""

    verdict: Verdict | None
    raw: str | None
    error: str | None = None


class PositivityJudge:
    """Asks an LLM which of two feedback texts is more positive."""

    method = "llm-judge (pairwise, order randomised)"

    def __init__(self, client: ChatClient) -> None:
        self.client = client

    def compare(self, a: str, b: str) -> JudgeCall:
        prompt = JUDGE_PROMPT.format(a=fenced(a), b=fenced(b))
        c = self.client.complete([{"role": "user", "content": prompt}])
        if not c.ok:
            return JudgeCall(None, None, c.error)
        return JudgeCall(parse_verdict(c.text or ""), c.text)
