"""Test helpers reusable across Charter's test suites (no pytest dependency)."""

from charter.testing.openai_server import RecordedRequest, Reply, ScriptedOpenAI

__all__ = ["RecordedRequest", "Reply", "ScriptedOpenAI"]
