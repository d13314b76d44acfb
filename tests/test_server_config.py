"""charter.yaml validation, the serve CLI, and the event queue's spill to disk."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from charter.cli import main
from charter.monitor.events import Event, EventQueue, JsonlSink, read_events
from charter.server import ConfigError, hash_key, load_config
from charter.testing import ScriptedOpenAI

GOOD = """\
upstream:
  base_url: http://127.0.0.1:11434/v1
  api_key_env: MY_KEY
  models: [llama3]
  timeouts: {connect: 2, read: 30, total: 120}
keys:
  - id: alice
    sha256: %s
    rate: {per_second: 5, burst: 10}
limits: {max_messages: 64, max_output_tokens: 2048}
guard:
  hold_back: 12
  fail_open: false
  categories:
    glorp_weapons: {action: block, refusal: "No."}
    cooking: {action: log_only}
events: {path: ev.jsonl, log_content: false}
""" % hash_key("sk-a")


def test_a_valid_config_loads(tmp_path: Path) -> None:
    p = tmp_path / "charter.yaml"
    p.write_text(GOOD)
    c = load_config(p)
    assert c.upstream.base_url == "http://127.0.0.1:11434/v1" and c.keys[0].id == "alice"
    assert c.guard.action("glorp_weapons") == "block" and c.guard.refusal_for("glorp_weapons") == "No."
    assert c.guard.action("cooking") == "log_only" and c.guard.action("other") == "block"
    assert c.events.spill == "ev.jsonl.spill"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("sha256: " + hash_key("sk-a"), "sha256: sk-a", ":8: keys[0].sha256: must be 64 hex"),
        ("action: log_only", "action: shout", ":16: guard.categories.cooking.action:"),
        ("hold_back: 12", "hold_bak: 12", ":12: guard.hold_bak: Extra inputs are not permitted"),
        ("base_url: http://127.0.0.1:11434/v1", "base_url: ftp://x", ":2: upstream.base_url: must be an http"),
        ("{max_messages: 64,", "{max_messages: -1,", ":10: limits.max_messages:"),
    ],
)
def test_config_errors_name_the_file_line_and_field(tmp_path: Path, old: str, new: str, where: str) -> None:
    p = tmp_path / "charter.yaml"
    assert old in GOOD
    p.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(str(p) + where), str(e.value)


def test_bad_yaml_is_reported_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("upstream:\n  base_url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+: invalid YAML"):
        load_config(p)


def test_serve_refuses_to_bind_beyond_loopback_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "client API keys are required" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 1  # no upstream at all
    assert "no upstream" in capsys.readouterr().err


def test_serve_refuses_an_upstream_key_httpx_cannot_send(tmp_path: Path, monkeypatch, capsys) -> None:
    """A pasted non-breaking space in the upstream key: a clean error before the guard loads, naming the
    variable and not the key (httpx would raise a raw UnicodeEncodeError on the first request)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("upstream:\n  base_url: http://127.0.0.1:9/v1\n  api_key_env: CHARTER_T_KEY\n")
    monkeypatch.setenv("CHARTER_T_KEY", "sk-hidden\u00a0x")
    assert main(["serve", "--config", str(cfg), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "API key in CHARTER_T_KEY holds a space" in err and "hidden" not in err and "Traceback" not in err


def test_serve_key_prints_a_key_and_only_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-key", "alice"]) == 0
    out = capsys.readouterr().out
    key = out.split("it is not stored): ", 1)[1].split()[0]
    assert f"sha256: {hash_key(key)}" in out and out.count(key) == 1
    # events record key_id (a sha256 prefix), not the name: the help says so
    assert main(["serve-key", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "Events record the key as key_id, the first 16 hex digits of the printed sha256" in help_text
    assert "shown in events" not in help_text


def test_charter_serve_runs_as_a_command(mini_model_dir: Path, tmp_path: Path) -> None:
    """It serves, and the upstream's user:password@ never reaches its output (httpx logs request URLs)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cfg = tmp_path / "charter.yaml"
    cfg.write_text(f"events: {{path: {tmp_path / 'ev.jsonl'}}}\n")
    with ScriptedOpenAI(default="hello there") as up:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from charter.cli import main; sys.exit(main(sys.argv[1:]))",
                                 "serve", "--upstream", up.base_url.replace("http://", "http://ops:s3cret-pw@"), "--model", str(mini_model_dir), "--port", str(port),
                                 "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode() if proc.stdout else ""
                time.sleep(0.1)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            assert r.json()["choices"][0]["message"]["content"] == "hello there"
        finally:
            proc.terminate()
            out = proc.communicate(timeout=10)[0].decode()
    assert [e.decision for e in read_events(tmp_path / "ev.jsonl")] == ["allowed"]
    assert "charter: guarding http://***@127.0.0.1" in out and "s3cret-pw" not in out


class SlowSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.gate = asyncio.Event()

    async def write(self, events: list[Event]) -> None:
        await self.gate.wait()
        self.events.extend(events)

    async def close(self) -> None:
        return None


class FailingSink:
    async def write(self, events: list[Event]) -> None:
        raise OSError("disk full")

    async def close(self) -> None:
        return None


def _overflow(spill: Path, replay: bool) -> tuple[EventQueue, SlowSink]:
    """50 events put into a queue of 5 whose sink accepts nothing until all are put."""
    async def run() -> tuple[EventQueue, SlowSink]:
        sink = SlowSink()
        q = EventQueue(sink, spill, maxsize=5, batch=2, replay=replay)
        await q.start()
        for i in range(50):
            q.put(Event(request_id=f"r{i}"))
        sink.gate.set()
        await q.close()
        return q, sink

    return asyncio.run(run())


def test_a_full_queue_spills_to_disk_and_counts_never_dropping(tmp_path: Path) -> None:
    q, sink = _overflow(tmp_path / "spill.jsonl", replay=True)
    # the overflow spilled to disk, then was replayed into the sink once it accepted writes again
    assert q.spilled > 0 and q.replayed == q.spilled and q.written == len(sink.events) == 50
    assert not (tmp_path / "spill.jsonl").exists() and not (tmp_path / "spill.jsonl.replaying").exists()
    ids = sorted([e.request_id for e in sink.events], key=lambda s: int(s[1:]))
    assert ids == [f"r{i}" for i in range(50)]


def test_the_overflow_is_written_at_once_but_never_fsynced_on_the_event_loop(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """put runs on the event loop: an fsync there made every request of an overloaded proxy wait on the disk.
    The overflow line is written (in the file, for a crash of the process) without one; a batch the sink
    failed still spills with an fsync, in a worker thread."""
    import threading

    import charter.monitor.events as events

    calls: list[str] = []
    real = os.fsync
    monkeypatch.setattr(events.os, "fsync", lambda fd: (calls.append(threading.current_thread().name), real(fd))[1])
    spill = tmp_path / "spill.jsonl"

    async def run() -> None:
        sink = SlowSink()
        q = EventQueue(sink, spill, maxsize=5, batch=2, replay=False)
        await q.start()
        for i in range(20):
            q.put(Event(request_id=f"r{i}"))
        assert calls == []  # nothing waited on the disk
        assert q.spilled == len(read_events(spill)) >= 14  # yet every overflowed event is in the file already
        sink.gate.set()
        await q.close()

    asyncio.run(run())

    class Failing:
        async def write(self, events: list[Event]) -> None:
            raise OSError("database down")

        async def close(self) -> None:
            return None

    async def failing() -> None:
        q = EventQueue(Failing(), tmp_path / "failed.jsonl", maxsize=100, replay=False)  # type: ignore[arg-type]
        await q.start()
        q.put(Event(request_id="x"))
        await q.join()
        await q.close()

    calls.clear()
    asyncio.run(failing())
    assert calls and all(name != threading.main_thread().name for name in calls)
    assert [e.request_id for e in read_events(tmp_path / "failed.jsonl")] == ["x"]


def test_without_replay_the_overflow_stays_in_the_spill_file(tmp_path: Path) -> None:
    q, sink = _overflow(tmp_path / "spill.jsonl", replay=False)
    spilled = read_events(tmp_path / "spill.jsonl")
    assert q.spilled == len(spilled) > 0 and q.written == len(sink.events) and q.replayed == 0
    ids = sorted([e.request_id for e in sink.events] + [e.request_id for e in spilled], key=lambda s: int(s[1:]))
    assert ids == [f"r{i}" for i in range(50)]


def test_a_failing_sink_spills_too_and_jsonl_sink_writes_lines(tmp_path: Path) -> None:
    async def run(sink: object, spill: Path) -> EventQueue:
        q = EventQueue(sink, spill, maxsize=100)  # type: ignore[arg-type]
        await q.start()
        for i in range(7):
            q.put(Event(request_id=f"r{i}", decision="blocked_input"))
        await q.close()
        return q

    q = asyncio.run(run(FailingSink(), tmp_path / "s1.jsonl"))
    assert q.sink_errors >= 1 and q.spilled == 7 and len(read_events(tmp_path / "s1.jsonl")) == 7
    q = asyncio.run(run(JsonlSink(tmp_path / "ev.jsonl"), tmp_path / "s2.jsonl"))
    assert q.written == 7 and [e.request_id for e in read_events(tmp_path / "ev.jsonl")] == [f"r{i}" for i in range(7)]
    assert not (tmp_path / "s2.jsonl").exists()


def test_empty_config_gives_defaults_and_bad_shapes_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# nothing configured yet\n")
    assert load_config(p) == load_config(None)
    p.write_text("- upstream\n- keys\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:1: the config must be a YAML mapping"):
        load_config(p)
    p.write_text("upstream: {base_url: '" + "a" * (1 << 20) + "'}\n")  # reads are bounded
    with pytest.raises(ConfigError, match="larger than"):
        load_config(p)
