"""Review 26 of monitoring: alert sinks, rules, clusters, the dashboard and the monitor CLI. Each test
failed before its fix; servers are real (uvicorn or a raw socket on loopback)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from charter.cli import main
from charter.monitor.alerts import Alert, AlertDeliveryError, WebhookSink, WebhookSinkSettings
from charter.monitor.clusters import MAX_CLUSTER_TEXT, cluster_events, select_events
from charter.monitor.dashboard import COOKIE, create_dashboard
from charter.monitor.events import Event, StageVerdict
from charter.monitor.rules import MAX_LISTED_SCORES, MonitorSettings, RuleEngine
from charter.monitor.store import AlertRecord, EventStore
from charter.server import ServerThread
from charter.server.config import ClientKey, hash_key

CAT = "chem_bio_weapons"
KEY = "sk-charter-review26-operator-0123456789"
KEYS = [ClientKey(id="ops", sha256=hash_key(KEY), dashboard=True)]


def ev(rid: str, user: str, score: float, t: float, *, conv: str | None = None, text: str | None = None,
       messages: list[dict[str, str]] | None = None, th: float = 0.6) -> Event:
    flagged = score >= th
    e = Event(request_id=rid, user_id=user, key_id="k1", conversation_id=conv, time=t,
              decision="blocked_input" if flagged else "allowed",
              verdicts=[StageVerdict(stage="stage1", score=score, flagged=flagged, category=CAT, threshold=th,
                                     scores={CAT: score})],
              categories=[CAT] if flagged else [])
    if text is not None or messages is not None:
        e.content_policy = "full"
        e.content = {"messages": messages or [{"role": "user", "content": text or ""}], "response": None}
    return e


def only(rule: str, sinks: list[dict[str, Any]], **over: Any) -> MonitorSettings:
    names = ("repeated_flags", "probing", "user_rotation", "escalation", "decomposition", "block_rate_spike")
    rules: dict[str, Any] = {n: {"enabled": n == rule} for n in names}
    rules[rule].update(over)
    return MonitorSettings.model_validate({"rules": rules, "sinks": sinks})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    s = EventStore.open(f"sqlite:///{tmp_path / 'charter.db'}")
    yield s
    s.close()


# ------------------------------------------------------------------------------ webhook sinks


def test_an_alert_the_receiver_refused_is_not_owed_to_it_any_more(store: EventStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4xx is final, but the store kept the alert owed to the webhook: once the delivery lease ran
    out (two minutes) any replica claimed it again and posted it again, forever."""
    posts: list[Any] = []

    async def hook(request: Request) -> JSONResponse:
        posts.append(await request.json())
        return JSONResponse({}, status_code=422)

    now = time.time()
    store.write([ev(f"a{i}", "u1", 0.9, now - 10 + i) for i in range(5)])
    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as rx:
        monkeypatch.setenv("R26_HOOK", rx.url + "/hook")
        eng = RuleEngine(store, only("repeated_flags", [{"type": "store"},
                                                        {"type": "webhook", "url_env": "R26_HOOK", "retries": 0}]))
        res = eng.run_once(now)
        name = "sinks[1] (webhook)"
        assert len(res.new) == 1 and res.sink_failures == {name: 1} and len(posts) == 1
        assert store.undelivered(name) == []
        # past the lease: nothing is claimable, so nothing is posted again
        assert store.claim_undelivered(name, now=time.time() + 3600) == []


class Trickler:
    """A raw HTTP receiver that answers one byte at a time (each read gets data, so no read timeout fires)."""

    def __init__(self, answer: bytes, every_s: float) -> None:
        self.answer, self.every_s = answer, every_s
        self.sent = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook/SECRET-PATH"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.recv(65536)
            try:
                for i in range(len(self.answer)):
                    conn.sendall(self.answer[i:i + 1])
                    self.sent += 1
                    time.sleep(self.every_s)
            except OSError:  # the client hung up
                pass

    def close(self) -> None:
        self.sock.close()
        self.thread.join(30)


def test_a_webhook_attempt_ends_at_its_deadline_even_when_bytes_keep_coming() -> None:
    """httpx's timeout bounds each read: a receiver that sent its answer a byte at a time held the
    monitor loop (and every rule) for as long as it kept sending."""
    answer = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 150 + b"\r\nContent-Length: 0\r\n\r\n"
    rx = Trickler(answer, every_s=0.05)  # about 9 s for the whole answer
    try:
        sink = WebhookSink(rx.url, timeout_s=0.5, retries=0)
        with pytest.raises(AlertDeliveryError) as e:
            sink.emit(Alert(rule="r", subject_kind="user", subject_id="u", summary="s"))
        assert e.value.retry and "no answer within 0.5 s" in str(e.value) and "SECRET" not in str(e.value)
        rx.thread.join(30)
        assert rx.sent < len(answer)  # the sink hung up on it rather than reading it all
    finally:
        rx.close()


def test_a_webhook_attempt_ends_at_its_deadline_while_the_name_lookup_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing bounded the host's name lookup: a resolver that did not answer held the monitor loop for as
    long as it hung. The attempt now ends at its deadline, and when the lookup does end, the late
    connection is shut as it opens: the receiver never gets a post the sink already gave up on."""
    posts: list[Any] = []

    async def hook(request: Request) -> JSONResponse:
        posts.append(await request.body())
        return JSONResponse({})

    real = socket.getaddrinfo
    release = threading.Event()

    def slow_lookup(host: object, *a: object, **k: object) -> object:
        if host == "alerts.example.test":  # a stuck resolver, for this one name
            release.wait(30)
            host = "127.0.0.1"
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as rx:
        sink = WebhookSink(f"http://alerts.example.test:{rx.port}/hook", timeout_s=0.5, retries=0)
        t0 = time.monotonic()
        with pytest.raises(AlertDeliveryError) as e:
            sink.emit(Alert(rule="r", subject_kind="user", subject_id="u", summary="s"))
        waited = time.monotonic() - t0
        assert e.value.retry and "no answer within 0.5 s" in str(e.value)
        assert waited < 10  # not the 30 s the lookup hangs
        release.set()  # the lookup ends; the abandoned attempt connects, and is shut
        time.sleep(1.0)
        assert posts == []
        # a name that resolves is posted to as before
        ok = WebhookSink(f"http://127.0.0.1:{rx.port}/hook", timeout_s=5, retries=0)
        ok.emit(Alert(rule="r", subject_kind="user", subject_id="u", summary="s"))
        assert len(posts) == 1


def test_a_webhook_url_in_the_config_is_checked_like_one_from_the_environment() -> None:
    """``url:`` was only checked for its scheme: a bad port or bracket passed, and every emit then raised
    a ValueError that was retried each evaluation forever."""
    for bad in ("http://127.0.0.1:99999/hook", "http://[::1/hook", "http://exa mple.com/hook", "http:///hook"):
        with pytest.raises(ValidationError):
            WebhookSinkSettings(url=bad)
    assert WebhookSinkSettings(url="https://hooks.example.com/T0/B1?x=1", headers_env={"X-Api-Key": "E"}).url
    for name in ("X Api", "X-Key:", "Authorizätion", ""):  # sent as is, each post failed at run time
        with pytest.raises(ValidationError):
            WebhookSinkSettings(url="https://hooks.example.com/x", headers_env={name: "E"})
    # built directly: a final failure that never shows the URL's path
    sink = WebhookSink("http://[::1/hook/SECRET-TOKEN", retries=3, backoff_s=0.01)
    with pytest.raises(AlertDeliveryError) as e:
        sink.emit(Alert(rule="r", subject_kind="user", subject_id="u", summary="s"))
    assert not e.value.retry and "SECRET" not in str(e.value) and "invalid URL" in str(e.value)


def test_webhook_backoff_is_capped_so_retries_cannot_hold_the_rules_for_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    """The settings allow retries: 10 with backoff_s: 30, and the sleeps doubled without a cap: about 8.5
    hours for one alert, with the rules not running."""
    import charter.monitor.alerts as alerts_mod

    calls: list[int] = []

    async def hook(request: Request) -> JSONResponse:
        calls.append(1)
        return JSONResponse({}, status_code=503)

    slept: list[float] = []
    s = WebhookSinkSettings(url="http://127.0.0.1:9/x", retries=10, backoff_s=30)  # the most the settings allow
    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as rx:
        sink = WebhookSink(rx.url + "/hook", retries=s.retries, backoff_s=s.backoff_s)
        # the sink's own clock only (the time module is shared with the server's thread)
        monkeypatch.setattr(alerts_mod, "time", types.SimpleNamespace(sleep=slept.append, time=time.time))
        with pytest.raises(AlertDeliveryError) as e:
            sink.emit(Alert(rule="r", subject_kind="user", subject_id="u", summary="s"))
    assert e.value.retry and len(calls) == 11 and len(slept) == 10
    assert slept[0] == 30 and max(slept) <= alerts_mod.MAX_BACKOFF_S


# ------------------------------------------------------------------------------ rules


def test_an_escalation_alert_lists_a_bounded_number_of_turn_scores(store: EventStore) -> None:
    now = time.time()
    n = 400
    store.write([ev(f"t{i}", "u1", 0.05 + 0.9 * i / (n - 1), now - n + i, conv="c1") for i in range(n)])
    res = RuleEngine(store, only("escalation", [{"type": "store"}])).run_once(now)
    (a,) = res.new
    assert a.stats["turns"] == n and len(a.stats["scores"]) == MAX_LISTED_SCORES
    assert a.stats["scores"][-1] == pytest.approx(0.95)  # the newest turns, up to the peak


def test_a_probing_alert_and_every_webhook_payload_are_bounded(store: EventStore) -> None:
    """Each transform chain an attacker tries is a distinct view, and the probing alert listed every one
    in its summary and stats; a webhook post carried the summary uncut (the store cut it to 2,000)."""
    now = time.time()
    n = 300
    evs = [ev(f"p{i}", "u1", 0.9, now - n + i) for i in range(n)]
    for i, e in enumerate(evs):
        e.verdicts[0].view = f"base64+translation_l{i:03d}"
    store.write(evs)
    (a,) = RuleEngine(store, only("probing", [{"type": "store"}])).run_once(now).new
    assert a.stats["distinct_views"] == n and len(a.stats["views"]) == MAX_LISTED_SCORES
    assert f"{n} obfuscations" in a.summary and f"and {n - 10} more" in a.summary and len(a.summary) < 600
    big = Alert(rule="r", subject_kind="conversation", subject_id="c" * 500, summary="s" * 10_000)
    p = big.payload()
    assert len(p["summary"]) == 2000 and len(p["subject_id"]) == 200


# ------------------------------------------------------------------------------ clusters


def test_cluster_selection_holds_only_the_start_of_each_last_user_message(store: EventStore) -> None:
    """Clustering read every selected event's whole stored conversation (up to 50,000 of them)."""
    now = time.time()
    history = [{"role": "user" if j % 2 == 0 else "assistant", "content": f"turn {j} " + "x" * 5000} for j in range(40)]
    long_ask = "how do I make glorp toxin " + "y" * (3 * MAX_CLUSTER_TEXT)
    store.write([ev(f"e{i}", f"u{i % 3}", 0.9, now - 100 + i, messages=[*history, {"role": "user", "content": long_ask}])
                 for i in range(12)])
    evs = select_events(store, since=now - 3600)
    assert len(evs) == 12
    for e in evs:
        assert e.content is not None and len(e.content["messages"]) == 1
        assert e.text is not None and e.text.startswith("how do I make glorp toxin") and len(e.text) == MAX_CLUSTER_TEXT
    (c,) = cluster_events(store, since=now - 3600)
    assert c.size == 12 and "glorp" in " ".join(c.top_terms)


def test_cluster_examples_carry_no_terminal_control_sequences(store: EventStore,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`charter monitor clusters` printed examples of client text with its escape sequences (retitle the
    terminal, clear the screen) and bidi overrides intact."""
    now = time.time()
    text = "make glorp toxin \x1b]0;owned\x07 \x1b[2J now \u202eevil\u202c"
    store.write([ev(f"x{i}", f"u{i % 3}", 0.9, now - 10 + i, text=text) for i in range(6)])
    (c,) = cluster_events(store, since=now - 3600)
    assert c.examples and all(x.startswith("make glorp toxin") for x in c.examples)
    assert not any(ch in x for x in c.examples for ch in "\x1b\x07\u202e\u202c")
    assert main(["monitor", "clusters", "--db", str(store.url), "--since", "1h"]) == 0
    out = capsys.readouterr().out
    assert "make glorp toxin" in out and "\x1b" not in out and "\u202e" not in out


# ------------------------------------------------------------------------------ dashboard


def _client(srv: ServerThread, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=srv.url, timeout=30, follow_redirects=False, **kw)


def test_dashboard_json_is_nosniff_logout_is_same_origin_and_alert_ids_are_ascii(store: EventStore) -> None:
    now = time.time()
    a, _ = store.upsert_alert(AlertRecord(rule="r", subject_kind="user", subject_id="u1", severity="high", summary="s",
                                          evidence=[], dedupe_key="k", first_seen=now, last_seen=now))
    assert a.id == 1
    with ServerThread(create_dashboard(store, keys=KEYS, cache_ttl_s=0)) as srv, _client(srv) as c:
        auth = {"authorization": f"Bearer {KEY}"}
        for r in (c.get("/api/summary", headers=auth), c.get("/api/summary"),
                  c.post("/api/alerts/1/status", json={"status": "nope"}, headers=auth)):
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        # int() read "１" (fullwidth) and " 1" as alert 1
        for raw in ("%EF%BC%91", "%201", "+1", "1_0"):
            assert c.post(f"/api/alerts/{raw}/status", json={"status": "resolved"}, headers=auth).status_code == 404
        assert [x.status for x in store.alerts(status=None)] == ["open"]
        assert c.post("/login", data={"key": KEY}).status_code == 303
        token = c.cookies[COOKIE]
        # another site's form posting to /logout ended the analyst's session
        out = c.post("/logout", headers={"origin": "http://evil.example"})
        assert out.status_code == 403 and COOKIE not in out.headers.get("set-cookie", "")
        assert c.get("/api/summary").status_code == 200
        host = srv.url.split("://", 1)[1]
        assert c.post("/logout", headers={"origin": f"http://{host}"}).status_code == 303
        c.cookies.set(COOKIE, token)
        assert c.get("/api/summary").status_code == 401


def test_a_drill_down_reads_a_bounded_number_of_stored_conversations_at_once(store: EventStore) -> None:
    """The events API held every selected event's whole stored conversation (up to 500 of several
    megabytes each) to show 300 characters of each: one click could exhaust the proxy's memory."""
    import tracemalloc

    now = time.time()
    history = [{"role": "user" if j % 2 == 0 else "assistant", "content": f"{j} " + "z" * 19_000} for j in range(30)]
    n, per_event = 60, 30 * 19_000
    store.write([ev(f"d{i}", "u1", 0.1, now - 100 + i, conv="c1", messages=history) for i in range(n)])
    with ServerThread(create_dashboard(store, cache_ttl_s=0)) as srv, _client(srv) as c:
        c.get("/api/summary")  # warm: imports and connections before measuring
        tracemalloc.start()
        try:
            r = c.get("/api/events", params={"user_id": "u1", "limit": "500"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    d = r.json()
    assert r.status_code == 200 and len(d["events"]) == n and d["conversations"] == {"c1": n}
    assert d["events"][0]["text"].startswith("28 zzz") and len(d["events"][0]["text"]) == 300
    assert peak < n * per_event / 2, peak  # all of them at once is n * per_event characters


def test_head_requests_to_the_login_page_are_not_failed_logins(store: EventStore) -> None:
    """Starlette answers HEAD with the GET route's handler, and the login handler took anything but GET
    for a form post: ten HEADs (a load balancer's health check) locked the address out of logging in."""
    with ServerThread(create_dashboard(store, keys=KEYS)) as srv, _client(srv) as c:
        for _ in range(12):
            assert c.head("/login").status_code == 200
        assert c.post("/login", data={"key": KEY}).status_code == 303


def test_a_stuck_database_cannot_take_every_worker_thread_of_the_proxy(store: EventStore) -> None:
    """The dashboard ran its queries on the process's shared worker threads (40): under `charter serve`,
    a database that stopped answering held one per dashboard request, until the proxy's guard checks,
    which run on the same threads, had none left."""
    import anyio
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount

    gate, entered = threading.Event(), []

    def stuck(*a: Any, **k: Any) -> dict[str, Any]:
        entered.append(1)
        gate.wait(60)
        return {}

    store.summary = stuck  # type: ignore[method-assign]

    async def work(request: Request) -> PlainTextResponse:  # what the proxy runs in worker threads
        return PlainTextResponse(str(await anyio.to_thread.run_sync(lambda: 42)))

    app = Starlette(routes=[Route("/work", work), Mount("/dashboard", create_dashboard(store, cache_ttl_s=0))])
    with ServerThread(app) as srv:
        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(srv.url + "/dashboard/api/summary", timeout=60)

        askers = [threading.Thread(target=ask, daemon=True) for _ in range(45)]
        try:
            for t in askers:
                t.start()
            deadline = time.monotonic() + 3
            while len(entered) < 45 and time.monotonic() < deadline:  # as many as get a thread
                time.sleep(0.01)
            assert 1 <= len(entered) <= 8
            assert httpx.get(srv.url + "/work", timeout=10).text == "42"
        finally:
            gate.set()
            for t in askers:
                t.join(30)


def test_an_answer_computed_across_a_cache_clear_is_not_kept() -> None:
    """An answer begun before an alert's status changed (clear()) was stored after it, so the dashboard
    showed the old open-alert count for another cache period after the analyst resolved one."""
    from charter.monitor.dashboard import TTLCache

    cache = TTLCache(60)
    state = {"open": 2}
    started, gate = threading.Event(), threading.Event()

    def slow() -> int:
        value = state["open"]  # read before the write
        started.set()
        gate.wait(10)
        return value

    t = threading.Thread(target=cache.get, args=("summary", slow))
    t.start()
    assert started.wait(10)
    state["open"] = 1  # the analyst resolves an alert...
    cache.clear()  # ...and the dashboard drops its answers
    gate.set()
    t.join(10)
    assert cache.get("summary", lambda: state["open"]) == 1


def test_browser_another_origins_form_cannot_log_the_analyst_out(browser: Any, store: EventStore) -> None:
    """Another port on the same host is the same site, so the SameSite cookie went with a form that page
    posted to /logout, and the analyst's session was revoked; the dashboard's own button still works."""
    from starlette.responses import HTMLResponse

    with ServerThread(create_dashboard(store, keys=KEYS, cache_ttl_s=0)) as dash:
        async def evil(request: Request) -> HTMLResponse:
            return HTMLResponse(f'<form id="f" method="post" action="{dash.url}/logout"></form>'
                                '<script>document.getElementById("f").submit()</script>')

        with ServerThread(Starlette(routes=[Route("/", evil)])) as other:
            ctx = browser.new_context()
            page = ctx.new_page()
            try:
                page.goto(f"{dash.url}/login")
                page.fill("#key", KEY)
                page.click("button[type=submit]")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                with page.expect_response(f"{dash.url}/logout", timeout=30_000) as resp:
                    page.goto(other.url)
                assert resp.value.status == 403
                page.goto(f"{dash.url}/")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)  # still logged in
                assert not page.url.endswith("/login")
                page.click("text=Log out")
                page.wait_for_url(f"{dash.url}/login", timeout=30_000)
                page.goto(f"{dash.url}/")
                assert page.url.endswith("/login")
            finally:
                ctx.close()


# ------------------------------------------------------------------------------ CLI


def test_cli_tables_show_client_chosen_ids_and_text_literally(store: EventStore, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Table cells were rich markup: a conversation id holding "[/x]" (any client can send one) made
    `charter monitor alerts` and `charter monitor conversation` crash with a MarkupError traceback, and
    "[link=...]" or an escape sequence reached the analyst's terminal."""
    now = time.time()
    conv = "c [/x] [link=https://evil.example]click[/link] \x1b]0;pwned\x07"
    text = "t [/bold] [red]hi"
    store.write([ev(f"r{i}", "u1", 0.1, now - 10 + i, conv=conv, text=text) for i in range(2)])
    store.upsert_alert(AlertRecord(rule="escalation", subject_kind="conversation", subject_id=conv, severity="high",
                                   summary="s [/summary]", evidence=[{"request_id": "q [/q]"}], dedupe_key="k",
                                   first_seen=now, last_seen=now))
    url = str(store.url)
    assert main(["monitor", "alerts", "--db", url]) == 0
    out = capsys.readouterr().out
    assert "[/x]" in out and "[link=https://evil.example]" in out and "s [/summary]" in out and "q [/q]" in out
    assert "\x1b" not in out and "\\x1b" in out
    assert main(["monitor", "conversation", conv, "--db", url]) == 0
    out = capsys.readouterr().out
    assert "t [/bold] [red]hi" in out and "[/x]" in out and "\x1b" not in out


def test_the_conversation_command_reads_a_bounded_number_of_stored_conversations_at_once(
        store: EventStore, capsys: pytest.CaptureFixture[str]) -> None:
    """Each turn's event stores the conversation so far, and the command held every one of them (up to
    10,000) to print each turn's last user message."""
    import tracemalloc

    now = time.time()
    history = [{"role": "user" if j % 2 == 0 else "assistant", "content": f"{j} " + "z" * 19_000} for j in range(30)]
    n, per_event = 60, 30 * 19_000
    store.write([ev(f"d{i}", "u1", 0.1, now - 100 + i, conv="c1", messages=history) for i in range(n)])
    tracemalloc.start()
    try:
        rc = main(["monitor", "conversation", "c1", "--db", str(store.url), "--json"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    turns = json.loads(capsys.readouterr().out)
    assert rc == 0 and len(turns) == n and turns[0]["text"].startswith("28 zzz") and turns[0]["user_id"] == "u1"
    assert peak < n * per_event / 2, peak  # all of them at once is n * per_event characters
