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


@pytest.fixture(scope="session")
def mini_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A guard trained on the mini constitution (about 10 s); shared by every suite that needs one."""
    from charter.constitution import load_constitution
    from charter.guard.calibrate import offline_dataset
    from charter.guard.train import TrainConfig, read_dataset, train_guard

    tmp = tmp_path_factory.mktemp("mini_guard")
    mini = FIXTURES / "mini.yaml"
    d = offline_dataset(mini, load_constitution(mini), tmp / "data", n=8000, seed=0)
    _, recs = read_dataset(d)
    cfg = TrainConfig(seed=0, max_stage2_train=800, max_stage2_eval=200)
    train_guard(recs, tmp / "model", constitution_sha256="c", data_sha256="d", config=cfg)
    return tmp / "model"
