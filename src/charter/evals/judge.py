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

_VERDICT = re.compile(r"[\s\"'*`(\[]*(?:(?:answer|verdict)\s*[:=-]\s*)?[\"'*`(\[]*(A|B|TIE)[\"'*`)\].!\s]*", re.IGNORECASE)


def parse_verdict(reply: str) -> Verdict | None:
    """``A``/``B``/``TIE`` from a judge reply, or None when it is anything else."""
    m = _VERDICT.fullmatch(reply or "")
    if not m:
        return None
    v = m.group(1).upper()
    return "TIE" if v == "TIE" else "A" if v == "A" else "B"


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
        prompt = JUDGE_PROMPT.format(a=a[:MAX_TEXT], b=b[:MAX_TEXT])
        c = self.client.complete([{"role": "user", "content": prompt}])
        if not c.ok:
            return JudgeCall(None, None, c.error)
        return JudgeCall(parse_verdict(c.text or ""), c.text)
