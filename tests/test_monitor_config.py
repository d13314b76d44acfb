"""Startup checks of the proxy's configuration (alert sinks, guard categories), alert sinks that fail at
run time, and the `charter monitor alerts` table, through charter.cli.main and real SQLite stores."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from charter.cli import main
from charter.guard import Guard
from charter.monitor.alerts import Alert
from charter.monitor.events import Event, StageVerdict
from charter.monitor.rules import (
    RULES,
    MonitorSettings,
    Rule,
    RuleContext,
    RuleEngine,
    start_monitor,
    stop_monitor,
)
from charter.monitor.store import EventStore
from charter.server import ConfigError, ServerConfig, create_app, load_config
from charter.server.config import check_startup
from charter.server.metrics import Metrics

BUILTIN = ("repeated_flags", "probing", "escalation", "decomposition", "block_rate_spike")
SINKS = "[{type: log}, {type: store}, {type: webhook, url_env: ALERT_WEBHOOK_URL}]"


@pytest.fixture(scope="module")
def guard() -> Guard:
    return Guard.load()  # the packaged guard


def flagged(rid: str, user: str, t: float) -> Event:
    v = StageVerdict(stage="stage1", score=0.9, flagged=True, category="cyber_offense", view="original",
                     threshold=0.6, scores={"cyber_offense": 0.9})
    return Event(request_id=rid, user_id=user, key_id="0123456789abcdef", time=t, decision="blocked_input",
                 verdicts=[v], categories=["cyber_offense"])


def write_config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "charter.yaml"
    p.write_text(body)
    return p


# ---------------------------------------------------------------------------- startup checks


def test_a_webhook_url_from_a_secrets_file_is_stripped_and_a_bad_one_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secrets file's trailing newline, or a port out of range, made every delivery raise a bare
    InvalidURL that the engine retried forever while charter serve started anyway; the URL (a secret)
    is never echoed."""
    from charter.monitor.alerts import WebhookSink, WebhookSinkSettings, webhook_problems

    s = WebhookSinkSettings(url_env="HOOK_URL", headers_env={"Authorization": "HOOK_AUTH"})
    monkeypatch.setenv("HOOK_URL", "https://hooks.example/T0/secret-token\n")
    monkeypatch.setenv("HOOK_AUTH", "Bearer abc\n")
    assert webhook_problems(s) == []
    sink = WebhookSink.from_settings(s)
    assert sink.url == "https://hooks.example/T0/secret-token"
    sink.close()
    for bad in ("https://hooks.example:99999/secret-token", "hooks.example/secret-token", "https://secret token/x"):
        monkeypatch.setenv("HOOK_URL", bad)
        (problem,) = webhook_problems(s)
        assert problem[0] == ("url_env",) and "does not hold an http://" in problem[1] and "secret" not in problem[1]
    monkeypatch.setenv("HOOK_URL", "https://hooks.example/x")
    monkeypatch.setenv("HOOK_AUTH", "Bearer a\r\nX-Injected: 1")
    (problem,) = webhook_problems(s)
    assert problem[0] == ("headers_env", "Authorization") and "control or non-ASCII" in problem[1]


def test_serve_refuses_an_unset_webhook_variable_naming_file_line_sink_and_variable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, guard: Guard) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("HOOK_AUTH", raising=False)
    cfg = write_config(tmp_path, "upstream: {base_url: http://127.0.0.1:9/v1}\nmonitor:\n  interval_s: 30\n"
                                 f"  sinks: {SINKS}\n")
    assert main(["serve", "--config", str(cfg), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert f"{cfg}:4: monitor.sinks[2].url_env: webhook sink: environment variable ALERT_WEBHOOK_URL is not set" in err
    assert not (tmp_path / "charter.db").exists()  # refused before opening anything
    # a header variable too; create_app (no file) names the field
    conf = load_config(cfg).model_dump()
    conf["events"]["db"] = f"sqlite:///{tmp_path / 'e.db'}"
    conf["monitor"]["sinks"] = [{"type": "webhook", "url": "http://127.0.0.1:9/hook",
                                 "headers_env": {"Authorization": "HOOK_AUTH"}}]
    with pytest.raises(ConfigError, match=r"^monitor\.sinks\[0\]\.headers_env\.Authorization: webhook sink: "
                                          r"environment variable HOOK_AUTH \(header Authorization\) is not set$"):
        create_app(ServerConfig.model_validate(conf), guard)
    monkeypatch.setenv("HOOK_AUTH", "Bearer x")
    create_app(ServerConfig.model_validate(conf), guard)
    # a signing secret's variable too
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    conf["monitor"]["sinks"][0]["secret_env"] = "HOOK_SECRET"
    with pytest.raises(ConfigError, match=r"^monitor\.sinks\[0\]\.secret_env: webhook sink: "
                                          r"environment variable HOOK_SECRET is not set$"):
        create_app(ServerConfig.model_validate(conf), guard)
    monkeypatch.setenv("HOOK_SECRET", "0123456789abcdef-secret")
    create_app(ServerConfig.model_validate(conf), guard)
    # without a store the rules never run, so their sinks are not needed
    monkeypatch.delenv("HOOK_AUTH")
    conf["events"]["db"] = None
    create_app(ServerConfig.model_validate(conf), guard)


def test_monitor_alerts_evaluate_notifies_no_sinks_so_an_unset_webhook_variable_does_not_matter(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    s = EventStore.open(url)
    now = time.time()
    s.write([flagged(f"req_{i}", "u1", now - 10 + i) for i in range(6)])
    s.close()
    cfg = write_config(tmp_path, f"monitor:\n  sinks: {SINKS}\n")
    assert main(["monitor", "alerts", "--db", url, "--evaluate", "--config", str(cfg), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["rule"] for r in rows] == ["repeated_flags"]


def test_monitor_alerts_evaluate_stores_alerts_even_without_a_store_sink(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--evaluate says it stores new alerts, and the command lists stored ones: a config whose sinks are
    only [log] must not make the evaluated alerts vanish."""
    url = f"sqlite:///{tmp_path / 'a.db'}"
    s = EventStore.open(url)
    now = time.time()
    s.write([flagged(f"req_{i}", "u1", now - 10 + i) for i in range(6)])
    s.close()
    cfg = write_config(tmp_path, "monitor:\n  sinks: [{type: log}]\n")
    assert main(["monitor", "alerts", "--db", url, "--evaluate", "--config", str(cfg), "--json"]) == 0
    assert [json.loads(x)["rule"] for x in capsys.readouterr().out.splitlines()] == ["repeated_flags"]
    s = EventStore.open(url)
    assert [a.rule for a in s.alerts(status=None)] == ["repeated_flags"]
    s.close()


@pytest.mark.parametrize("bad", ["weapons", "permitted"])
def test_unknown_guard_category_ids_are_a_config_error(tmp_path: Path, guard: Guard, bad: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    valid = [c for c in guard.classes if c != "permitted"]
    assert "explosives_weapons" in valid
    conf = {"upstream": {"base_url": "http://127.0.0.1:9/v1"},
            "guard": {"categories": {"explosives_weapons": {"refusal": "No weapons."}, bad: {"refusal": "No."}}}}
    with pytest.raises(ConfigError) as e:
        create_app(ServerConfig.model_validate(conf), guard)
    assert str(e.value) == (f"guard.categories.{bad}: unknown category id {bad!r}; the guard's restricted "
                            f"categories are: {', '.join(valid)}")
    cfg = write_config(tmp_path, "upstream: {base_url: http://127.0.0.1:9/v1}\nevents: {path: ev.jsonl}\nguard:\n"
                                 f"  categories:\n    explosives_weapons: {{refusal: x}}\n    {bad}: {{refusal: y}}\n")
    assert main(["serve", "--config", str(cfg), "--port", "0"]) == 1
    assert f"{cfg}:6: guard.categories.{bad}: unknown category id {bad!r}" in capsys.readouterr().err
    del conf["guard"]["categories"][bad]
    create_app(ServerConfig.model_validate(conf), guard)  # known ids are fine
    check_startup(ServerConfig.model_validate(conf), list(guard.classes))


# ---------------------------------------------------------------------------- sinks failing at run time


class Raising:
    name = "raising"

    def emit(self, alert: Alert) -> None:
        raise RuntimeError("receiver down")

    def close(self) -> None:
        return None


class Recording:
    def __init__(self) -> None:
        self.got: list[str] = []

    def emit(self, alert: Alert) -> None:
        self.got.append(alert.subject_id)

    def close(self) -> None:
        return None


def only_repeated_flags(sinks: list[dict[str, Any]]) -> MonitorSettings:
    return MonitorSettings.model_validate({"rules": {n: {"enabled": n == "repeated_flags"} for n in BUILTIN},
                                          "sinks": sinks})


def test_a_failing_sink_never_stops_the_other_sinks_or_the_store(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    s = EventStore.open(f"sqlite:///{tmp_path / 'f.db'}")
    now = time.time()
    s.write([flagged(f"{u}_{i}", u, now - 10 + i) for u in ("u1", "u2") for i in range(6)])
    settings = only_repeated_flags([{"type": "log"}, {"type": "store"}, {"type": "webhook", "url_env": "ALERT_WEBHOOK_URL"}])
    with caplog.at_level(logging.WARNING, logger="charter.monitor"):
        eng = RuleEngine(s, settings)  # built despite the unset variable (logged)
        caplog.clear()
        res = eng.run_once(now)
    assert sorted(a.subject_id for a in res.new) == ["u1", "u2"]
    assert sorted(a.subject_id for a in s.alerts()) == ["u1", "u2"]  # the store sink got them
    assert sum("repeated_flags user:u" in r.getMessage() for r in caplog.records) == 2  # so did the log sink
    failures = [r for r in caplog.records if "alert sink" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None  # one line per run, no traceback
    assert "failed on 2 alert(s) (0 waiting" in failures[0].getMessage()  # it cannot work until a restart
    assert "ALERT_WEBHOOK_URL is not set" in failures[0].getMessage()
    assert res.errors == {"sink:sinks[2] (webhook)": "AlertDeliveryError: monitor.sinks[2]: webhook sink: "
                                                     "environment variable ALERT_WEBHOOK_URL is not set"}
    # any sink raising: the ones after it still get every alert
    rec = Recording()
    s.write([flagged(f"u3_{i}", "u3", now - 10 + i) for i in range(6)])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="charter.monitor"):
        res = RuleEngine(s, settings, sinks=[Raising(), rec]).run_once(now)
    assert rec.got == ["u3"] and res.errors == {"sink:raising": "RuntimeError: receiver down"}
    assert [r.exc_info for r in caplog.records if "alert sink raising" in r.getMessage()] == [None]
    s.close()


class Tick(Rule):
    """A new alert on every evaluation (its own subject), counting the evaluations."""

    name = "tick"
    runs: ClassVar[int] = 0

    def evaluate(self, ctx: RuleContext) -> list[Alert]:
        Tick.runs += 1
        return [Alert(rule="tick", subject_kind="global", subject_id=f"run{Tick.runs}", summary="tick")]


@pytest.fixture
def tick() -> Iterator[type[Tick]]:
    Tick.runs = 0
    RULES.register()(Tick)
    yield Tick
    RULES._items.pop("tick", None)


def test_the_background_monitor_opens_its_store_once_and_keeps_alerting_past_a_broken_sink(
        tmp_path: Path, tick: type[Tick], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    url = f"sqlite:///{tmp_path / 'loop.db'}"
    EventStore.open(url).close()
    settings = MonitorSettings.model_validate({
        "interval_s": 0.01, "rules": {n: {"enabled": False} for n in BUILTIN},
        "sinks": [{"type": "log"}, {"type": "store"}, {"type": "webhook", "url_env": "ALERT_WEBHOOK_URL"}]})

    metrics = Metrics()

    async def run() -> None:
        task = start_monitor(url, settings, None, metrics)
        deadline = time.monotonic() + 60
        while tick.runs < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await stop_monitor(task)

    with caplog.at_level(logging.INFO):
        asyncio.run(run())
    assert tick.runs >= 4
    migrations = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    assert migrations and len(set(migrations)) == len(migrations)  # migrated once, not per interval
    assert "monitor evaluation" not in caplog.text  # the evaluation itself never failed
    sink_lines = [r for r in caplog.records if "alert sink sinks[2] (webhook) failed" in r.getMessage()]
    assert len(sink_lines) >= 3 and all(r.exc_info is None for r in sink_lines)
    # the proxy's /metrics shows the broken sink (and what it missed) without reading logs
    text = metrics.render().decode()
    sample = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("charter_")}
    runs = sample['charter_monitor_runs_total{outcome="errors"}']
    assert runs >= 3 and sample['charter_alert_sink_failures_total{sink="sinks[2] (webhook)"}'] == runs
    assert sample["charter_alerts_new_total"] == runs and 'charter_monitor_runs_total{outcome="failed"}' not in sample
    s = EventStore.open(url)
    try:
        assert len(s.alerts()) >= 3  # every interval's alert reached the store
    finally:
        s.close()


# ---------------------------------------------------------------------------- the alerts table


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_alerts_table_is_wide_when_piped_and_shows_utc(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch, new_york: None) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    url = f"sqlite:///{tmp_path / 't.db'}"
    s = EventStore.open(url)
    t0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC, 17:13:20 in New York
    ev = {"kind": "event", "request_id": "req_0123456789abcdef", "time": t0, "score": 0.91,
          "category": "cyber_offense", "view": "base64", "decision": "blocked_input"}
    s.upsert_alert(Alert(rule="repeated_flags", subject_kind="user", subject_id="u_0123456789abcdefghij",
                         summary="6 flagged or near-threshold cyber_offense requests in 3600 s", events=[ev],
                         first_seen=t0, last_seen=t0 + 60).record())
    s.close()
    assert main(["monitor", "alerts", "--db", url]) == 0  # capsys: not a terminal, like a pipe
    out = capsys.readouterr().out
    widths = [len(line) for line in out.splitlines()]
    assert 80 < max(widths) <= 160
    assert "first / last seen (UTC)" in out and "time UTC" in out
    assert "2023-11-14 22:13:20" in out and "2023-11-14 22:14:20" in out and "22:13:20 0.91 cyber_offense" in out
    assert "17:13:20" not in out


def test_stopping_the_monitor_while_it_opens_its_store_still_closes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is opened in a worker thread that a cancel cannot interrupt: what it opened is closed."""
    import threading

    events: list[str] = []
    inside, cancelled = threading.Event(), threading.Event()
    real_open, real_close = RuleEngine.open.__func__, RuleEngine.close  # type: ignore[attr-defined]

    def spy_open(cls: type[RuleEngine], *a: Any, **kw: Any) -> RuleEngine:
        inside.set()
        cancelled.wait(10)  # the cancel lands while the thread is here
        events.append("open")
        return real_open(cls, *a, **kw)

    def spy_close(self: RuleEngine) -> None:
        events.append("close")
        real_close(self)

    monkeypatch.setattr(RuleEngine, "open", classmethod(spy_open))
    monkeypatch.setattr(RuleEngine, "close", spy_close)
    settings = MonitorSettings.model_validate({"interval_s": 60})

    async def run() -> None:
        task = start_monitor(f"sqlite:///{tmp_path / 'c.db'}", settings, None)
        while not inside.is_set():
            await asyncio.sleep(0.01)
        await stop_monitor(task)
        cancelled.set()

    asyncio.run(run())
    deadline = time.monotonic() + 10
    while events != ["open", "close"] and time.monotonic() < deadline:  # closed when the thread finishes
        time.sleep(0.05)
    assert events == ["open", "close"]
