"""A small synchronous client for OpenAI-compatible ``/chat/completions`` endpoints, for evaluations.

Retries what :mod:`charter.endpoints` retries (408/409/425/429/5xx, timeouts, connection
errors; exponential backoff and jitter, honouring ``Retry-After``); other failures and
malformed replies come back as a :class:`Completion` with ``error`` set, never as text. The API key is read from an environment
variable and is never logged or stored. Thread-safe: one client serves a worker pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from charter.endpoints import Backoff, Endpoint, MalformedCompletion, base_url_problem, completion, redact_url, shown_url
from charter.errors import UsageError

TARGET_KEY_ENV = "CHARTER_TARGET_API_KEY"
JUDGE_KEY_ENV = "CHARTER_JUDGE_API_KEY"
MAX_REPLY_CHARS = 50_000  # longer replies are truncated (a runaway or hostile endpoint)


@dataclass
class Completion:
    """One call's outcome: ``text`` on success, else ``error`` (e.g. ``HTTP 500``, ``malformed completion``)."""

    text: str | None = None
    error: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


def redact_spec(spec: str) -> str:
    """``openai:URL`` with any user:password@ part of the URL masked, for messages and results."""
    kind, sep, rest = (spec or "").partition(":")
    return kind + sep + redact_url(rest) if sep else spec


def parse_endpoint(spec: str, option: str = "--target") -> str:
    """``openai:BASE_URL`` to the base URL; anything else is a :class:`UsageError` (exit 2)."""
    kind, sep, rest = (spec or "").partition(":")
    if not sep or kind != "openai":
        raise UsageError(f"{option} {shown_url(spec or '')!r}: expected openai:BASE_URL, e.g. openai:http://localhost:8000/v1")
    if problem := base_url_problem(rest):
        if "query" in problem:  # not echoed: a query often carries a key
            key_env = JUDGE_KEY_ENV if option == "--judge" else TARGET_KEY_ENV
            raise UsageError(f"{option}: the base URL {problem}; pass a key in ${key_env}")
        raise UsageError(f"{option} {shown_url(spec or '')!r}: the base URL {problem}, e.g. openai:http://localhost:8000/v1")
    return rest.rstrip("/")


class ChatClient:
    """Chat completions against one endpoint and model, with retries; see the module docstring."""

    def __init__(
        self, base_url: str, model: str = "default", *, api_key_env: str = TARGET_KEY_ENV,
        timeout: float = 60.0, max_retries: int = 3, backoff: float = 0.5, max_backoff: float = 20.0,
        max_tokens: int = 512, temperature: float = 0.0, sleep: Callable[[float], None] = time.sleep,
        what: str = "the model",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._lock = threading.Lock()
        self.calls = self.errors = self.retries = self.successes = 0
        self._endpoint = Endpoint(f"{self.base_url}/chat/completions", what, key_env=api_key_env,
                                  timeout=timeout, retries=max_retries, backoff=Backoff(backoff, max_backoff), sleep=sleep)

    def _count(self, c: Completion) -> Completion:
        with self._lock:
            self.calls += 1
            self.retries += c.attempts - 1
            if c.ok:
                self.successes += 1
            else:
                self.errors += 1
        return c

    def complete(self, messages: list[dict[str, Any]]) -> Completion:
        """One completion; raises :class:`CharterError` only when the endpoint was never reachable."""
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_tokens, "temperature": self.temperature}
        p = self._endpoint.post(body)
        if p.ok:
            assert p.response is not None
            return self._count(self._parse(p.response, p.attempts))
        return self._count(Completion(error=p.error, attempts=p.attempts))

    @staticmethod
    def _parse(r: httpx.Response, attempts: int) -> Completion:
        try:
            c = completion(r)
        except MalformedCompletion:
            return Completion(error="malformed completion", attempts=attempts)
        if not c.text.strip():  # a reasoning model out of tokens, a content filter: no answer to grade
            return Completion(error=f"empty completion (finish_reason={c.finish_reason})", attempts=attempts)
        return Completion(text=c.text[:MAX_REPLY_CHARS], attempts=attempts)

    def close(self) -> None:
        self._endpoint.close()
