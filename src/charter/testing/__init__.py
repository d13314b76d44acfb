"""Test helpers reusable across Charter's test suites (no pytest dependency)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from charter.testing.openai_server import RecordedRequest, Reply, ScriptedOpenAI

__all__ = ["RecordedRequest", "Reply", "ScriptedOpenAI", "wait_for"]


def wait_for(cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``cond`` until it is truthy or ``timeout`` passes; its last value (events reach a sink
    just after the response that made them ends)."""
    deadline = time.monotonic() + timeout
    while not (v := cond()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return v
