"""A client that sends its request body a byte at a time is answered 408 once ``limits.body_timeout_s`` has
passed, instead of holding a connection and a task for as long as it keeps trickling."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from charter.guard import Guard
from charter.monitor.events import MemorySink
from charter.server import ServerConfig, ServerThread, create_app
from charter.server.config import ConfigError
from charter.testing import ScriptedOpenAI
from slow_client import trickle

ANSWER = "About 7 minutes."


@pytest.fixture
def served(mini_model_dir: Path) -> Iterator[tuple[ServerThread, ScriptedOpenAI]]:
    with ScriptedOpenAI([ANSWER], default=ANSWER) as up:
        cfg = ServerConfig.model_validate({"upstream": {"base_url": up.base_url}, "limits": {"body_timeout_s": 1}})
        with ServerThread(create_app(cfg, Guard.load(mini_model_dir), MemorySink())) as srv:
            yield srv, up


def test_a_trickled_body_is_answered_408_in_the_openai_format(served: tuple[ServerThread, ScriptedOpenAI]) -> None:
    srv, up = served
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "how long do I boil an egg " * 4}]}).encode()
    # about 130 bytes at 0.1 s each would take 13 s; the limit is 1 s
    reply = trickle(srv.url, body, gap=0.1, stop_after=20)
    head, _, rest = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head[:80]
    err = json.loads(rest[rest.index(b"{"):rest.rindex(b"}") + 1])["error"]
    assert err["code"] == "request_timeout" and "body_timeout_s" in err["message"]
    assert up.requests == []  # nothing was forwarded
    # the replica still serves a client that sends its body whole
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                   timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == ANSWER


def test_a_slow_body_that_arrives_within_the_limit_is_served(served: tuple[ServerThread, ScriptedOpenAI]) -> None:
    srv, up = served
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    reply = trickle(srv.url, body, gap=0.005, stop_after=20)  # about 60 bytes in 0.3 s
    assert reply.startswith(b"HTTP/1.1 200"), reply[:80]
    assert len(up.requests) == 1


@pytest.mark.parametrize("bad", [0, -1, 7200])
def test_body_timeout_is_bounded(bad: float) -> None:
    with pytest.raises((ConfigError, ValueError)):
        ServerConfig.model_validate({"upstream": {"base_url": "http://127.0.0.1:9"}, "limits": {"body_timeout_s": bad}})
