"""What gets attacked: a guard's classifiers directly, or any OpenAI-compatible chat endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


from charter.endpoints import Endpoint, MalformedCompletion, base_url_problem, completion, redact_url, shown_url
from charter.errors import UsageError

Prompt = str | list[dict[str, Any]]
API_KEY_ENV = "CHARTER_TARGET_API_KEY"


@dataclass
class TargetResult:
    """One query's outcome. Guard targets fill ``score``/``flagged``; endpoints fill ``text``."""

    text: str | None = None
    score: float | None = None  # the guard's verdict score (guard target)
    flagged: bool = False  # the guard flagged it, or the endpoint blocked it (content_filter)
    finish_reason: str | None = None
    error: str | None = None  # HTTP or transport failure (the attempt cannot be graded)
    stage: str | None = None


def as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


class GuardTarget:
    """Attack the input classifiers: an attack succeeds when no stage flags it."""

    kind: Literal["guard", "openai"] = "guard"

    def __init__(self, guard: Any, name: str = "guard") -> None:
        self.guard = guard
        self.name = name

    @classmethod
    def load(cls, model_dir: str | None) -> GuardTarget:
        from charter.guard import Guard

        g = Guard.load(Path(model_dir) if model_dir else None)
        return cls(g, f"guard:{model_dir}" if model_dir else "guard")

    def query(self, prompt: Prompt) -> TargetResult:
        v = self.guard.check_input(prompt)
        return TargetResult(score=float(v.score), flagged=bool(v.flagged), stage=v.stage)


class OpenAITarget:
    """Any OpenAI-compatible ``/chat/completions`` endpoint (a Charter proxy or a bare model).

    The API key comes from ``$CHARTER_TARGET_API_KEY`` and is never logged or stored.
    """

    kind: Literal["guard", "openai"] = "openai"

    def __init__(self, base_url: str, model: str = "default", *, api_key: str | None = None,
                 timeout: float = 60.0, max_tokens: int = 512, max_retries: int = 3,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"openai:{redact_url(self.base_url)}"
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self._endpoint = Endpoint(f"{self.base_url}/chat/completions", "the target", key_env=API_KEY_ENV,
                                  api_key=api_key, timeout=timeout, retries=max_retries, sleep=sleep)

    def query(self, prompt: Prompt) -> TargetResult:
        """One completion. Raises :class:`CharterError` when the endpoint has never been reachable
        (a wrong host or port would otherwise make every attempt of a long run an error)."""
        body = {"model": self.model, "messages": as_messages(prompt), "max_tokens": self.max_tokens, "temperature": 0}
        p = self._endpoint.post(body)
        if _filtered(p.response):
            return TargetResult(text="", flagged=True, finish_reason="content_filter")
        if not p.ok or p.response is None:
            return TargetResult(error=p.error)
        try:
            c = completion(p.response)
        except MalformedCompletion:
            return TargetResult(error="malformed completion")
        charter = c.body.get("charter")
        blocked = c.finish_reason == "content_filter" or (isinstance(charter, dict) and charter.get("decision") == "blocked")
        return TargetResult(text=c.text, flagged=bool(blocked), finish_reason=c.finish_reason)

    def close(self) -> None:
        self._endpoint.close()


def _filtered(r: Any) -> bool:
    """A prompt the endpoint's content filter refused: Azure OpenAI answers HTTP 400 with error code
    ``content_filter``. Read as an error, such blocks were left out of the ASR (raising it) and of the
    over-refusal rate (lowering it)."""
    if r is None or r.status_code != 400:
        return False
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(err, dict) and err.get("code") == "content_filter"


def parse_target(spec: str, model: str | None = None) -> GuardTarget | OpenAITarget:
    """``guard[:MODEL_DIR]`` or ``openai:BASE_URL``."""
    kind, _, rest = spec.partition(":")
    if kind == "guard":
        return GuardTarget.load(rest or None)
    if kind == "openai":
        if problem := base_url_problem(rest):
            raise UsageError(f"--target {shown_url(spec)!r}: the base URL {problem}, e.g. openai:http://localhost:8000/v1")
        return OpenAITarget(rest, model or "default")
    raise UsageError(f"--target {shown_url(spec)!r}: expected guard[:MODEL_DIR] or openai:BASE_URL")
