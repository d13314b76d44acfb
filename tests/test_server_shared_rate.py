"""A key's rate shared by proxy replicas through the monitoring store (``limits.shared_rate``)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from charter.guard import Guard
from charter.monitor.events import MemorySink
from charter.monitor.store import EventStore
from charter.server import ConfigError, ServerConfig, ServerThread, create_app, hash_key, load_config
from charter.server.config import check_startup
from charter.testing import ScriptedOpenAI

BENIGN = "how long do I boil an egg"
ANSWER = "About 7 minutes for a jammy yolk and 10 for a firm one."
KEY = "sk-alice"
OPS = "sk-operator"


@pytest.fixture(scope="module")
def guard(mini_model_dir: Path) -> Guard:
    return Guard.load(mini_model_dir)


def config(up: ScriptedOpenAI, db: str | None, shared: bool, burst: int) -> dict[str, Any]:
    return {"upstream": {"base_url": up.base_url},
            "keys": [{"id": "alice", "sha256": hash_key(KEY), "rate": {"per_second": 0.001, "burst": burst}},
                     {"id": "ops", "sha256": hash_key(OPS), "dashboard": True}],
            "limits": {"shared_rate": shared}, "events": {"db": db}, "monitor": {"interval_s": 0}}


@pytest.fixture
def replicas(guard: Guard) -> Iterator[Callable[..., list[httpx.Client]]]:
    """``n`` proxies built from one config, each on its own uvicorn, in front of one scripted upstream."""
    with ExitStack() as stack:
        up = stack.enter_context(ScriptedOpenAI(default=ANSWER))

        def go(n: int, db: str | None, *, shared: bool, burst: int) -> list[httpx.Client]:
            cfg = ServerConfig.model_validate(config(up, db, shared, burst))
            out = []
            for _ in range(n):
                srv = stack.enter_context(ServerThread(create_app(cfg, guard, MemorySink())))
                out.append(stack.enter_context(httpx.Client(base_url=srv.url, timeout=30,
                                                            headers={"authorization": f"Bearer {KEY}"})))
            return out

        yield go


def send(clients: list[httpx.Client], n: int) -> list[int]:
    """``n`` requests, round robin over the replicas (a load balancer)."""
    body = {"model": "m", "messages": [{"role": "user", "content": BENIGN}]}
    return [clients[i % len(clients)].post("/v1/chat/completions", json=body).status_code for i in range(n)]


def test_replicas_sharing_a_store_share_each_keys_rate(replicas: Callable[..., list[httpx.Client]], store_url: str) -> None:
    per_replica = send(replicas(2, store_url, shared=False, burst=3), 8)
    assert per_replica.count(200) == 6  # each replica lets its own burst through: twice the key's rate
    shared = replicas(2, store_url, shared=True, burst=3)
    codes = send(shared, 8)
    assert codes.count(200) == 3 and codes.count(429) == 5, codes
    r = shared[1].post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": BENIGN}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1
    s = EventStore.open(store_url)
    with s.engine.connect() as c:
        rows = c.execute(sa.text("select key_id, tokens from rate_buckets")).all()
    s.close()
    assert [(k, t < 1) for k, t in rows] == [(hash_key(KEY)[:16], True)]  # the key's hash prefix, never the key


def test_take_token_is_atomic_across_processes_sharing_the_store(store_url: str) -> None:
    stores = [EventStore.open(store_url) for _ in range(2)]
    granted: list[float] = []
    lock = threading.Lock()

    def hammer(s: EventStore) -> None:
        for _ in range(15):
            w = s.take_token("k", 0.001, 10)
            with lock:
                granted.append(w)

    threads = [threading.Thread(target=hammer, args=(stores[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 60 and granted.count(0.0) == 10  # 60 tries at one bucket of 10: exactly 10 go
    assert all(w > 0 for w in granted if w)
    assert stores[0].take_token("other", 0.001, 10) == 0.0  # buckets are per key
    for s in stores:
        s.close()


def test_refill_follows_the_rate_and_a_clock_behind_never_refills(tmp_path: Path) -> None:
    s = EventStore.open(f"sqlite:///{tmp_path / 'c.db'}")
    assert [s.take_token("k", 2.0, 2, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert s.take_token("k", 2.0, 2, now=100.5) == 0.0  # half a second at 2/s: one more
    assert s.take_token("k", 2.0, 2, now=99.0) == 0.5  # a replica whose clock is behind: nothing refilled
    assert [s.take_token("k", 2.0, 2, now=1000.0) for _ in range(3)] == [0.0, 0.0, 0.5]  # refills up to burst only
    s.close()


def test_a_down_store_degrades_to_per_replica_limits_without_leaking_its_url(
        replicas: Callable[..., list[httpx.Client]], caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql+psycopg://charter:s3cret-pw@127.0.0.1:{closed_port()}/nowhere?connect_timeout=2"
    (client,) = replicas(1, url, shared=True, burst=2)
    with caplog.at_level(logging.WARNING, logger="charter.server"):
        codes = send([client], 4)
    assert codes == [200, 200, 429, 429]  # limited by the replica's own bucket, not unlimited
    assert "store unavailable" in caplog.text and "s3cret-pw" not in caplog.text
    m = client.get("/metrics", headers={"authorization": f"Bearer {OPS}"}).text
    assert any(line.startswith("charter_rate_store_errors_total ") and float(line.split()[1]) >= 1 for line in m.splitlines())


def closed_port() -> int:
    """A loopback port with nothing listening on it: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_shared_rate_without_a_store_is_refused_naming_the_line(tmp_path: Path) -> None:
    p = tmp_path / "charter.yaml"
    p.write_text("upstream: {base_url: 'http://127.0.0.1:9/v1'}\nlimits:\n  shared_rate: true\n")
    cfg = load_config(p)
    with pytest.raises(ConfigError) as e:
        check_startup(cfg, None, p)
    assert f"{p}:3" in str(e.value) and "limits.shared_rate" in str(e.value) and "events.db" in str(e.value)


def test_a_store_that_stops_answering_does_not_hold_requests(replicas: Callable[..., list[httpx.Client]],
                                                           caplog: pytest.LogCaptureFixture) -> None:
    # a host that takes the connection and then says nothing: the database client would wait on it
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"postgresql+psycopg://charter@127.0.0.1:{silent.getsockname()[1]}/nowhere"
        (client,) = replicas(1, url, shared=True, burst=2)
        with caplog.at_level(logging.WARNING, logger="charter.server"):
            codes = send([client], 4)  # each within the client's 30 s timeout, or send raises
        assert codes == [200, 200, 429, 429]  # counted per replica meanwhile
        assert "no answer within 1 s" in caplog.text
