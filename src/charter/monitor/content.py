"""What an event may keep of the conversation: the content policy.

``none`` keeps nothing; ``hash`` keeps a SHA-256 of each message (equal requests stay linkable,
e.g. many accounts sending the same text); ``redacted`` keeps the text with personal data and
secrets masked; ``full`` keeps it verbatim. The policy is applied where the event is built, so
text the policy drops never reaches a queue, a spill file or the store.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any, Literal

ContentPolicy = Literal["none", "hash", "redacted", "full"]
POLICIES: tuple[str, ...] = ("none", "hash", "redacted", "full")
MAX_TEXT = 20_000  # characters kept per message under redacted/full

_REDACTIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\b(?:sk|pk|rk|ghp|gho|xox[bap])[-_][A-Za-z0-9_\-]{12,}\b"), "[SECRET]"),
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), "[SECRET]"),
    (re.compile(r"\b(?:Bearer|token|api[_-]?key|password|passwd|secret)\s*[:=]?\s*\S{6,}", re.I), "[SECRET]"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[EMAIL]"),
    (re.compile(r"\bhttps?://\S+", re.I), "[URL]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"), "[IP]"),
    (re.compile(r"\b(?:\d[ -]?){13,19}\b"), "[CARD]"),
    (re.compile(r"(?<!\w)\+?\d[\d ().-]{7,}\d\b"), "[PHONE]"),
]


def redact(text: str) -> str:
    """Mask secrets, e-mail addresses, URLs, IP addresses, card and phone numbers."""
    text = text[:MAX_TEXT]
    for pat, repl in _REDACTIONS:
        text = pat.sub(repl, text)
    return text


def text_hash(text: str) -> str:
    """A stable hash of a message: NFKC, case and whitespace folded, so trivial edits still match."""
    norm = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:32]


def apply_policy(messages: list[dict[str, str]] | None, response: str | None,
                 policy: ContentPolicy) -> dict[str, Any] | None:
    """The ``content`` field of an event under ``policy`` (None under ``none``)."""
    if policy == "none":
        return None
    if policy == "hash":
        def f(t: str) -> str:
            return text_hash(t)
    elif policy == "redacted":
        f = redact
    elif policy == "full":
        def f(t: str) -> str:
            return t[:MAX_TEXT]
    else:
        raise ValueError(f"unknown content policy {policy!r} (expected one of {', '.join(POLICIES)})")
    msgs = [{"role": m.get("role", "user"), "content": f(m.get("content") or "")} for m in messages or []]
    last = next((m.get("content") or "" for m in reversed(messages or []) if m.get("role") == "user"), None)
    # the hash of the original last user message links equal requests under every policy
    return {"messages": msgs, "response": f(response) if response else None,
            "user_hash": text_hash(last) if last is not None else None}


def last_user_text(content: dict[str, Any] | None) -> str | None:
    """The last user message kept in ``content`` (a hash under the hash policy)."""
    if not content:
        return None
    for m in reversed(content.get("messages") or []):
        if m.get("role") == "user":
            return m.get("content")
    return None
