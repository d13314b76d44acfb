from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from charter.testing import ScriptedOpenAI

FIXTURES = Path(__file__).parent / "fixtures"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Playwright), skipped where it is not installed unless CHARTER_REQUIRE_BROWSER=1."""
    import os

    if not CHROMIUM.exists():
        if os.environ.get("CHARTER_REQUIRE_BROWSER") == "1":
            pytest.fail(f"a browser is required (CHARTER_REQUIRE_BROWSER=1) but {CHROMIUM} is missing")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); set CHARTER_REQUIRE_BROWSER=1 to fail instead")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


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


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real PostgreSQL server on loopback for this test session (Debian's postgresql package).

    Skipped where PostgreSQL is not installed, except under CHARTER_REQUIRE_POSTGRES=1 (set by
    .ci/run), where its absence fails the tests instead of hiding them.
    """
    import os

    from charter.testing import postgres as pgmod

    if not pgmod.available():
        if os.environ.get("CHARTER_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (CHARTER_REQUIRE_POSTGRES=1) but initdb/pg_ctl were not found")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with pgmod.PostgresCluster.start_new(tmp_path_factory.mktemp("pg")) as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty monitoring database: SQLite in tmp_path, and PostgreSQL (one new database each)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'charter.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="module")
def mini_guard(mini_model_dir: Path) -> Any:
    from charter.guard import Guard

    return Guard.load(mini_model_dir)


@pytest.fixture(scope="module")
def mini_guard_exchange_margin(mini_model_dir: Path) -> Any:
    """The mini guard with its exchange thresholds one logit lower, for tests of which text the proxy
    scores (tool calls, reasoning). The mini constitution has one harmful reply skeleton, and after a
    benign prompt ("Tell me a story about a chemist.") a harmful reply clears the calibrated threshold
    by 0.1-0.3 logits, which a retrain's noise can undo (a normalisation change once did); the
    benign replies those tests send sit 5-8 logits below it."""
    import math

    from charter.guard import Guard

    g = Guard.load(mini_model_dir)

    def lower(p: float) -> float:
        return 1 / (1 + math.exp(1 - math.log(p / (1 - p))))

    g.thresholds = {**g.thresholds, "exchange": lower(g.thresholds["exchange"])}
    if g.exchange_combiner:
        g.exchange_combiner = {**g.exchange_combiner, "threshold": lower(g.exchange_combiner["threshold"])}
    return g


@pytest.fixture
def reply_guard(mini_guard: Any) -> Any:
    """The guard ``reply_proxy`` runs; a test module overrides this fixture to run another."""
    return mini_guard


@pytest.fixture
def reply_proxy(reply_guard: Any) -> Iterator[Callable[..., Any]]:
    """start(message, finish=None, **config) -> a running proxy (``proxy_harness.Proxy``) in front of
    an upstream that replies with the assistant ``message``; both stop when the test ends."""
    from functools import partial

    from proxy_harness import start_proxy

    with ExitStack() as stack:
        yield partial(start_proxy, stack, reply_guard)
