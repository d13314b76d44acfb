from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from charter.testing import ScriptedOpenAI

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def mini_path() -> Path:
    return FIXTURES / "mini.yaml"


@pytest.fixture
def scripted_openai() -> Iterator[Callable[..., ScriptedOpenAI]]:
    """Start scripted OpenAI-compatible servers on loopback; all are stopped after the test."""
    with ExitStack() as stack:

        def start(*args: Any, **kwargs: Any) -> ScriptedOpenAI:
            return stack.enter_context(ScriptedOpenAI(*args, **kwargs))

        yield start
