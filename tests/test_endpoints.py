"""The retry policy shared by every OpenAI-compatible client, against a real loopback server."""

from __future__ import annotations

import email.utils
import socket
import time

import httpx
import pytest

from charter.endpoints import Backoff, post_json, redact_url, retry_after_seconds, retryable
from charter.testing.openai_server import Reply


def test_retryable_statuses_and_retry_after() -> None:
    assert all(retryable(s) for s in (408, 409, 425, 429, 500, 502, 503))
    assert not any(retryable(s) for s in (400, 401, 403, 404, 413, 422))
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("-1") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (retry_after_seconds(later) or 0) <= 30


def test_backoff_grows_is_capped_and_defers_to_the_server() -> None:
    b = Backoff(base=0.5, cap=4.0)
    waits = [b.wait(a) for a in range(6)]
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 1.5 and all(w <= 4.5 for w in waits)
    assert b.wait(0, retry_after=2.5) == 2.5 and b.wait(0, retry_after=60) == 4.0


def test_post_json_retries_then_reports_the_last_failure(scripted_openai) -> None:
    sleeps: list[float] = []
    srv = scripted_openai([Reply.error(500), Reply.error(429, retry_after=1), "ok"], default=Reply.error(404))
    with httpx.Client() as c:
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=3, sleep=sleeps.append)
        assert p.ok and p.attempts == 3 and p.response is not None and p.response.json()["choices"][0]["message"]["content"] == "ok"
        assert len(sleeps) == 2 and sleeps[1] == 1.0
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=3, sleep=sleeps.append)
        assert not p.ok and p.error == "HTTP 404" and p.attempts == 1 and len(sleeps) == 2  # not retried
        # nothing listens on a freshly closed port: every attempt fails to connect
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        p = post_json(c, f"http://127.0.0.1:{port}/v1/chat/completions", {}, retries=2, sleep=sleeps.append)
        assert p.response is None and p.connect_only and p.attempts == 3 and p.error == "connection failed"


def test_completion_reads_the_first_choice_and_rejects_what_is_not_a_chat_completion() -> None:
    from charter.endpoints import MalformedCompletion, completion, completion_text

    def reply(body: object) -> httpx.Response:
        return httpx.Response(200, json=body) if not isinstance(body, str) else httpx.Response(200, text=body)

    ok = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}], "charter": {"x": 1}}
    c = completion(reply(ok))
    assert (c.text, c.finish_reason, c.body["charter"]) == ("hi", "stop", {"x": 1})
    # a tool call or refusal leaves content null: that is an empty reply, not a malformed one
    assert completion_text(reply({"choices": [{"message": {"content": None}}]})) == ""
    for bad in ("<html>not json</html>", {"choices": []}, {"data": 1}, [1, 2],
                {"choices": [{"message": "hi"}]}, {"choices": [{"message": {"content": ["a", "b"]}}]},
                '{"choices": ' + "[" * 100_000):  # nested too deeply: RecursionError in the parser
        with pytest.raises(MalformedCompletion):
            completion(reply(bad))


@pytest.mark.parametrize("url, shown", [
    ("http://u:p@host:8000/v1", "http://***@host:8000/v1"),
    ("https://token@host/v1", "https://***@host/v1"),
    ("http://a:b@c@host/v1?x=1", "http://***@host/v1?x=1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("not a url", "not a url"),
    ("bob:hunter2@db/x", "***@db/x"),  # no scheme: still masked
    # an unencoded /, ? or # in the password (database drivers accept them) does not end the host part
    ("postgresql://user:hunter2/x#y@db:5432/charter", "postgresql://***@db:5432/charter"),
    ("postgresql+psycopg://u:pa?ss@db/charter", "postgresql+psycopg://***@db/charter"),
])
def test_redact_url_masks_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown



def test_a_reply_past_the_cap_is_an_error_read_no_further(scripted_openai) -> None:
    """A runaway or hostile endpoint cannot fill memory: every client reads at most MAX_REPLY_BYTES."""
    import gzip

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from charter.endpoints import completion_text
    from charter.server import ServerThread

    srv = scripted_openai(["x" * 5000, "short"])
    sleeps: list[float] = []
    with httpx.Client() as c:
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=3, sleep=sleeps.append, max_bytes=1000)
        assert not p.ok and p.response is None and p.attempts == 1 and not sleeps  # not retried
        assert p.error is not None and "over the 1000" in p.error
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, max_bytes=1000)
        assert p.ok and p.response is not None and completion_text(p.response) == "short"

    # a gzip-encoded reply is read decoded, once: the bound is on what the client holds
    body = ('{"choices": [{"index": 0, "message": {"role": "assistant", "content": "' + "y" * 3000 + '"}}]}').encode()

    async def zipped(request: object) -> Response:
        return Response(gzip.compress(body), media_type="application/json", headers={"content-encoding": "gzip"})

    with ServerThread(Starlette(routes=[Route("/c", zipped, methods=["POST"])])) as z, httpx.Client() as c:
        p = post_json(c, z.url + "/c", {}, max_bytes=len(body))
        assert p.ok and p.response is not None and completion_text(p.response) == "y" * 3000
        p = post_json(c, z.url + "/c", {}, max_bytes=len(body) - 1)  # the compressed body is far smaller
        assert not p.ok and "over the" in (p.error or "")


def test_an_unusable_api_key_is_a_clean_error_that_does_not_echo_it(monkeypatch) -> None:
    """A pasted non-breaking space or accented letter made httpx raise a raw UnicodeEncodeError; a
    trailing newline (a key read from a file) is stripped."""
    from charter.endpoints import Endpoint
    from charter.errors import CharterError

    monkeypatch.setenv("X_KEY", "sk-secret\u00a0tail")
    with pytest.raises(CharterError, match=r"API key for the judge \(\$X_KEY\) holds a space") as e:
        Endpoint("http://127.0.0.1:1/v1/chat/completions", "the judge", key_env="X_KEY")
    assert "secret" not in str(e.value)
    monkeypatch.setenv("X_KEY", "sk-ok\n")
    ep = Endpoint("http://127.0.0.1:1/v1/chat/completions", "the judge", key_env="X_KEY")
    assert ep.client.headers["authorization"] == "Bearer sk-ok"
    ep.close()


def test_a_trickling_reply_times_out_at_the_attempts_deadline(scripted_openai) -> None:
    # 8 bytes every 0.1 s: each read comes well inside the 0.5 s read timeout, so only a deadline on
    # the whole reply ends it (the body takes about 4 s; the deadline is twice the read timeout)
    srv = scripted_openai([Reply("x" * 100, trickle=0.1), Reply("on time", delay=0.3)])
    with httpx.Client(timeout=0.5) as c:
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=0)
        assert not p.ok and p.error == "timeout" and p.response is None
        # a reply that is slow to start but arrives whole is not cut
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=0)
        assert p.ok and p.response is not None and p.response.json()["choices"][0]["message"]["content"] == "on time"


def test_a_trickling_reply_that_finishes_in_time_is_read_whole(scripted_openai) -> None:
    srv = scripted_openai([Reply("ok", trickle=0.01)])
    with httpx.Client(timeout=5.0) as c:
        p = post_json(c, srv.base_url + "/chat/completions", {"messages": []}, retries=0)
    assert p.ok and p.response is not None and p.response.json()["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize("url, why", [("http://", "with a host"), ("http://127.0.0.1:99999/v1", "does not parse"),
                                      ("http://127.0.0.1:8000/v1?key=sk-leak", "no query string"),
                                      ("ftp://127.0.0.1/v1", "must be an http:// or https:// URL"),
                                      # another problem found first: the query is still not shown
                                      ("http://u:p?w@127.0.0.1:99999/v1?key=sk-leak", "does not parse")])
def test_every_endpoint_option_follows_one_base_url_rule(tmp_path, capsys: pytest.CaptureFixture[str], url: str, why: str) -> None:
    """The proxy's upstream, the data generator, the red team's target and judge, and the evaluations'
    target each checked base URLs their own way (a query string, which swallows /chat/completions, was
    refused by two); one rule now answers for all of them, and none shows the query (it may hold a key)."""
    from pathlib import Path

    from charter.cli import main
    from charter.endpoints import base_url_problem

    mini = str(Path(__file__).parent / "fixtures" / "mini.yaml")
    assert why in (base_url_problem(url) or "")
    runs = [["redteam", "--target", f"openai:{url}", "--out", str(tmp_path / "r"), "-c", mini],
            ["redteam", "--target", "guard", "--out", str(tmp_path / "r"), "-c", mini, "--judge-url", url, "--judge-model", "j"],
            ["eval", "sycophancy", "--target", f"openai:{url}", "--out", str(tmp_path / "e")],
            ["generate", "--generator", "llm", "--base-url", url, "--model", "m", "-c", mini, "--out", str(tmp_path / "d"),
             "--n", "6"]]
    for argv in runs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert why in err and "sk-leak" not in err and "p?w" not in err and "Traceback" not in err, (argv, err)
    assert base_url_problem("http://127.0.0.1:8000/v1") is None and base_url_problem("https://api.example.com") is None


def test_an_error_shows_a_url_without_credentials_query_or_fragment() -> None:
    """Cutting the query first showed a password holding "?" (http://admin:s3cr?et@host: 'http://admin:s3cr')."""
    from charter.endpoints import shown_url

    assert shown_url("http://admin:s3cr?et@host/v1") == "http://***@host/v1"
    assert shown_url("http://admin:s3#cr@host/v1?key=sk-1#frag") == "http://***@host/v1"
    assert shown_url("https://host:8443/v1?api_key=sk-2") == "https://host:8443/v1"
    assert shown_url("openai:http://u:p@h/v1?k=1") == "openai:http://***@h/v1"
