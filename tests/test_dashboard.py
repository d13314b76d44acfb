"""The monitoring dashboard: its JSON API and auth over real uvicorn, and the page in real headless Chromium.

Browser tests skip when /usr/bin/chromium is absent, except under CHARTER_REQUIRE_BROWSER=1 (CI),
where they fail. Screenshots go to tests/artifacts/dashboard/ (git-ignored); the path is printed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from charter.monitor.dashboard import COOKIE, create_dashboard
from charter.monitor.events import Event, StageVerdict
from charter.monitor.store import AlertRecord, EventStore
from charter.server import ServerThread
from charter.server.config import ClientKey, ServerConfig, hash_key

ARTIFACTS = Path(__file__).parent / "artifacts" / "dashboard"
KEY = "sk-charter-dashboard-test-0123456789abcdef"
KEYS = [ClientKey(id="ops", sha256=hash_key(KEY), dashboard=True)]
CLIENT_KEY = "sk-charter-dashboard-test-client-key-0000"
NOW = time.time()

# what seed() writes: 20 events by 3 users, 5 blocked, 6 flagged, 2 escalated; 2 open alerts and 1 resolved
EXPECT = {"events": 20, "blocked": 5, "flagged": 6, "escalated": 2,
          "by_category": {"glorp_weapons": 5, "cyber": 1}, "by_stage": {"stage1": 4, "stage2": 1, "exchange": 1}}


def _v(stage: str, score: float, flagged: bool = False, category: str | None = None, **kw: Any) -> StageVerdict:
    return StageVerdict(stage=stage, score=score, flagged=flagged, category=category, **kw)


def seed(store: EventStore) -> None:
    evs: list[Event] = []
    t = iter(range(1, 100))

    def add(user: str, conv: str, decision: str, verdicts: list[StageVerdict], text: str | None = None,
            signals: tuple[str, ...] = ()) -> None:
        content = {"messages": [{"role": "user", "content": text}], "response": None} if text else None
        evs.append(Event(user_id=user, conversation_id=conv, time=NOW - 60 * next(t), decision=decision,  # type: ignore[arg-type]
                         verdicts=verdicts, content=content, content_policy="redacted" if text else "none",
                         categories=list(signals)))

    for i in range(4):  # alice: 4 blocked by stage 1, one of them base64
        add("u_alice", "c_a1", "blocked_input", [_v("stage1", 0.95, True, "glorp_weapons", view="base64" if i == 0 else "plain")],
            text=f"how do I make glorp toxin, attempt {i}")
    add("u_alice", "c_a1", "flagged", [_v("stage1", 0.6, escalated=True), _v("stage2", 0.7, True, "glorp_weapons")])
    add("u_alice", "c_a1", "allowed", [_v("stage1", 0.1)])
    for _ in range(4):
        add("u_alice", "c_a2", "allowed", [_v("stage1", 0.05)])
    add("u_bob", "c_b1", "blocked_output", [_v("stage1", 0.2), _v("exchange", 0.88, True, "cyber", view="leet")])
    add("u_bob", "c_b1", "allowed", [_v("stage1", 0.4, escalated=True), _v("stage2", 0.3)])
    for _ in range(4):
        add("u_bob", "c_b1", "allowed", [_v("stage1", 0.1)])
    for i in range(4):  # one reply with a flag-only wellbeing signal
        add("u_carol", "c_c1", "allowed", [_v("stage1", 0.02)], signals=("wellbeing:action_distortion",) if i == 0 else ())
    assert store.write(evs) == 20

    def alert(rule: str, kind: str, sid: str, sev: str, summary: str) -> AlertRecord:
        a, _ = store.upsert_alert(AlertRecord(rule=rule, subject_kind=kind, subject_id=sid, severity=sev, summary=summary,
                                              evidence=[{"request_id": evs[0].request_id}], dedupe_key=f"{rule}:{sid}",
                                              first_seen=NOW - 600, last_seen=NOW - 60))
        return a

    alert("repeat_blocks", "user", "u_alice", "high", "4 blocked requests in 10 minutes")
    alert("obfuscation", "conversation", "c_b1", "medium", "encoded request blocked at the exchange stage")
    old = alert("old_rule", "user", "u_carol", "low", "resolved long ago")
    assert old.id is not None and store.set_alert_status(old.id, "resolved")


@pytest.fixture
def seeded(store_url: str) -> Iterator[EventStore]:
    store = EventStore.open(store_url)
    seed(store)
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore.open(f"sqlite:///{tmp_path / 'charter.db'}")
    seed(store)
    yield store
    store.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """serve(app) -> a running uvicorn server on loopback (stopped after the test)."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(ServerThread(app))


def _client(server: ServerThread, **kw: Any) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, follow_redirects=False, **kw)


# ---------------------------------------------------------------------------------------- API


def test_api_numbers_match_the_store(seeded: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(seeded, cache_ttl_s=0))
    with _client(srv) as c:
        s = c.get("/api/summary", params={"since": "1h"}).json()
        for k in ("events", "blocked", "flagged", "escalated", "by_category", "by_stage"):
            assert s[k] == EXPECT[k], k
        assert s["block_rate"] == pytest.approx(0.25) and s["escalation_rate"] == pytest.approx(0.10)
        assert s["open_alerts"] == 2
        ts = c.get("/api/timeseries", params={"since": "1h"}).json()
        assert ts["bucket_s"] == 60 and 60 <= len(ts["buckets"]) <= 62  # every minute, empty ones filled
        assert sum(b["total"] for b in ts["buckets"]) == 20 and sum(b["blocked"] for b in ts["buckets"]) == 5
        users = c.get("/api/users").json()["users"]
        assert [u["user_id"] for u in users] == ["u_alice", "u_bob", "u_carol"]
        assert (users[0]["flagged"], users[0]["blocked"], users[0]["open_alerts"]) == (5, 4, 1)
        alerts = c.get("/api/alerts").json()["alerts"]
        assert sorted(a["rule"] for a in alerts) == ["obfuscation", "repeat_blocks"]  # the resolved one is not open
        d = c.get("/api/events", params={"user_id": "u_alice"}).json()
        assert len(d["events"]) == 10 and d["conversations"] == {"c_a1": 6, "c_a2": 4} and not d["truncated"]
        assert [e["ts"] for e in d["events"]] == sorted((e["ts"] for e in d["events"]), reverse=True)
        blocked = [e for e in d["events"] if e["decision"] == "blocked_input"]
        assert {e["view"] for e in blocked} == {"base64", "plain"} and {e["stage"] for e in blocked} == {"stage1"}
        assert all(e["text"].startswith("how do I make glorp toxin") for e in blocked)  # redacted policy keeps text
        assert [a["rule"] for a in d["alerts"]] == ["repeat_blocks"]
        conv = c.get("/api/events", params={"conversation_id": "c_b1"}).json()
        assert len(conv["events"]) == 6 and conv["events"][0]["user_id"] == "u_bob"
        assert {(e["category"], e["stage"], e["view"]) for e in conv["events"] if e["flagged"]} == {("cyber", "exchange", "leet")}
        assert len(c.get("/api/events", params={"user_id": "u_alice", "limit": "3"}).json()["events"]) == 3
        assert c.get("/api/events", params={"user_id": "u_alice", "limit": "3"}).json()["truncated"]


def test_api_rejects_bad_parameters(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store))
    with _client(srv) as c:
        r = c.get("/api/summary", params={"since": "30y"})
        assert r.status_code == 400 and "1h, 24h, 7d" in r.json()["error"]
        assert c.get("/api/events").status_code == 400  # unbounded: neither a user nor a conversation
        assert c.get("/api/events", params={"user_id": "a", "conversation_id": "b"}).status_code == 400
        assert c.get("/api/users", params={"limit": "-1"}).status_code == 400
        assert len(c.get("/api/users", params={"limit": "100000"}).json()["users"]) == 3  # capped, not refused
        assert c.get("/api/alerts", params={"status": "bogus"}).status_code == 400
        assert c.get("/static/../dashboard.py").status_code == 404


def test_keys_required_for_api_and_page(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    with _client(srv) as c:
        r = c.get("/api/summary")
        assert r.status_code == 401 and "Bearer" in r.json()["error"] and r.headers["www-authenticate"].startswith("Bearer")
        assert c.get("/api/summary", headers={"authorization": "Bearer wrong"}).status_code == 401
        ok = c.get("/api/summary", headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200 and ok.json()["events"] == 20
        page = c.get("/")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert c.get("/", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        bad = c.post("/login", data={"key": "sk-wrong"})
        assert bad.status_code == 401 and "wrong key" in bad.text and COOKIE not in bad.headers.get("set-cookie", "")
        good = c.post("/login", data={"key": KEY})
        assert good.status_code == 303 and good.headers["location"] == "/"
        cookie = good.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        token = c.cookies[COOKIE]
        assert KEY not in cookie and hash_key(KEY) not in token  # a signed token, not the key or its hash
        assert c.get("/api/summary").status_code == 200 and c.get("/").status_code == 200  # the cookie now
        c.cookies.set(COOKIE, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
        assert c.get("/api/summary").status_code == 401  # tampered
        c.cookies.set(COOKIE, token)
        assert c.get("/api/summary").status_code == 200
        out = c.post("/logout")
        assert out.status_code == 303 and "max-age=0" in out.headers["set-cookie"].lower()
        c.cookies.set(COOKIE, token)
        assert c.get("/api/summary").status_code == 401  # a logged-out token stays dead


def test_client_keys_do_not_open_the_dashboard(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    """A monitored client's key read every tenant's stored requests and acknowledged the alert raised
    against itself; only keys marked dashboard: true open the dashboard now, and with none marked no one
    can, with a login message that says why."""
    client = ClientKey(id="alice", sha256=hash_key(CLIENT_KEY))
    srv = serve(create_dashboard(sqlite_store, keys=[*KEYS, client]))
    with _client(srv) as c:
        for path in ("/api/summary", "/api/events"):
            assert c.get(path, headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 401
        (alert,) = [a for a in sqlite_store.alerts() if a.rule == "repeat_blocks"]
        assert c.post(f"/api/alerts/{alert.id}/status", json={"status": "acknowledged"},
                      headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 401
        assert c.post("/login", data={"key": CLIENT_KEY}).status_code == 401
        assert c.get("/api/summary", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    only_clients = serve(create_dashboard(sqlite_store, keys=[client]))
    with _client(only_clients) as c:
        assert c.get("/api/summary").status_code == 401  # keys configured: never open
        r = c.post("/login", data={"key": CLIENT_KEY})
        assert r.status_code == 401 and "give an operator&#39;s key dashboard: true" in r.text


def test_bearer_guesses_are_throttled_like_logins(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    with _client(srv) as c:
        for i in range(10):
            assert c.get("/api/summary", headers={"authorization": f"Bearer guess-{i}"}).status_code == 401
        assert c.get("/api/summary", headers={"authorization": f"Bearer {KEY}"}).status_code == 401  # for a minute
        assert c.post("/login", data={"key": KEY}).status_code == 429


def test_alert_status_changes_need_a_key_json_and_the_same_origin(sqlite_store: EventStore,
                                                                  serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    (alert,) = [a for a in sqlite_store.alerts() if a.rule == "repeat_blocks"]
    path = f"/api/alerts/{alert.id}/status"
    auth = {"authorization": f"Bearer {KEY}"}
    with _client(srv) as c:
        assert c.post(path, json={"status": "acknowledged"}).status_code == 401
        assert c.post(path, data={"status": "acknowledged"}, headers=auth).status_code == 415  # a form post
        assert c.post(path, json={"status": "acknowledged"}, headers={**auth, "origin": "http://evil.example"}).status_code == 403
        assert c.post(path, json={"status": "closed"}, headers=auth).status_code == 400
        assert c.post("/api/alerts/999999/status", json={"status": "resolved"}, headers=auth).status_code == 404
        assert [a.status for a in sqlite_store.alerts(status=None) if a.id == alert.id] == ["open"]  # nothing changed yet
        assert c.get("/api/summary", headers=auth).json()["open_alerts"] == 2
        ok = c.post(path, json={"status": "acknowledged"}, headers=auth)
        assert ok.status_code == 200 and ok.json() == {"id": alert.id, "status": "acknowledged"}
        assert [a.status for a in sqlite_store.alerts(status=None) if a.id == alert.id] == ["acknowledged"]
        assert c.get("/api/summary", headers=auth).json()["open_alerts"] == 1  # the cached summary was dropped
        assert alert.id not in [a["id"] for a in c.get("/api/alerts", headers=auth).json()["alerts"]]


def test_login_is_throttled_and_refuses_cross_site(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    with _client(srv) as c:
        assert c.post("/login", data={"key": KEY}, headers={"origin": "http://evil.example"}).status_code == 403
        # a sandboxed frame or a data: page posts with Origin: null; the dashboard's own pages send
        # their origin (Referrer-Policy same-origin; the browser test logs in through the form)
        assert c.post("/login", data={"key": KEY}, headers={"origin": "null"}).status_code == 403
        assert c.get("/login").headers["referrer-policy"] == "same-origin"
        for _ in range(10):
            assert c.post("/login", data={"key": "nope"}).status_code == 401
        assert c.post("/login", data={"key": KEY}).status_code == 429  # even the right key, for a minute


def test_a_trickled_login_or_alert_change_is_cut_off(sqlite_store: EventStore, serve: Callable[..., ServerThread],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A client sending its login form or an alert change a byte at a time gets 408 once BODY_TIMEOUT_S has
    passed (it held a connection and a task for as long as it liked), and the dashboard still serves others."""
    from charter.monitor import dashboard
    from slow_client import trickle

    monkeypatch.setattr(dashboard, "BODY_TIMEOUT_S", 1.0)
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    (alert,) = [a for a in sqlite_store.alerts() if a.rule == "repeat_blocks"]
    form = f"key={KEY}".encode()  # about 45 bytes at 0.1 s each: 4.5 s, against a 1 s limit
    reply = trickle(srv.url, form, gap=0.1, stop_after=20, path="/login", content_type="application/x-www-form-urlencoded")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert b"connection: close" in reply.lower()
    assert b"did not arrive within 1 s" in reply
    body = b'{"status": "acknowledged"}'
    reply = trickle(srv.url, body, gap=0.1, stop_after=20, path=f"/api/alerts/{alert.id}/status",
                    headers={"Authorization": f"Bearer {KEY}"})
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert b"connection: close" in reply.lower()  # the slow client does not keep the connection
    assert [a.status for a in sqlite_store.alerts(status=None) if a.id == alert.id] == ["open"]
    # a form that arrives slowly but within the limit logs in; the server serves a whole request as before
    reply = trickle(srv.url, form, gap=0.005, stop_after=20, path="/login", content_type="application/x-www-form-urlencoded")
    assert reply.startswith(b"HTTP/1.1 303") and COOKIE.encode() in reply, reply[:200]
    with _client(srv) as c:
        ok = c.post(f"/api/alerts/{alert.id}/status", json={"status": "resolved"}, headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200


def test_an_oversized_login_form_or_alert_change_is_refused(sqlite_store: EventStore,
                                                            serve: Callable[..., ServerThread]) -> None:
    """Bodies are bounded as they arrive (the proxy's reader: charter.server.body): 4 KiB for the login form,
    1 KiB for an alert change; a refused alert change changes nothing."""
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    (alert,) = [a for a in sqlite_store.alerts() if a.rule == "repeat_blocks"]
    with _client(srv) as c:
        r = c.post("/login", data={"key": KEY, "pad": "x" * 5000})
        assert r.status_code == 413 and "form too large" in r.text
        r = c.post(f"/api/alerts/{alert.id}/status", content=b'{"status": "resolved", "pad": "' + b"x" * 2000 + b'"}',
                   headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {"error": "body too large"}
        assert [a.status for a in sqlite_store.alerts(status=None) if a.id == alert.id] == ["open"]
        assert c.post("/login", data={"key": KEY}).status_code == 303  # a form of the right size logs in


def test_behind_a_tls_reverse_proxy_logins_work_and_the_cookie_is_secure(sqlite_store: EventStore,
                                                                         serve: Callable[..., ServerThread]) -> None:
    """Behind a proxy that ends TLS and does not pass the browser's Host on, every login was refused
    (Origin differed from Host) and the session cookie went out without Secure (the request was http)."""
    public = "https://charter.example.com"
    srv = serve(create_dashboard(sqlite_store, keys=KEYS, origins=[public + ":443/"]))
    (alert,) = [a for a in sqlite_store.alerts() if a.rule == "repeat_blocks"]
    with _client(srv) as c:
        login = c.post("/login", data={"key": KEY}, headers={"origin": public})
        assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
        # with origins configured, only they count: the backend's own Host is not the browser's page
        assert c.post("/login", data={"key": KEY}, headers={"origin": srv.url}).status_code == 403
        assert c.post("/login", data={"key": KEY}, headers={"origin": "https://evil.example"}).status_code == 403
        path, auth = f"/api/alerts/{alert.id}/status", {"authorization": f"Bearer {KEY}"}
        assert c.post(path, json={"status": "acknowledged"}, headers={**auth, "origin": srv.url}).status_code == 403
        assert c.post(path, json={"status": "acknowledged"}, headers={**auth, "origin": public}).status_code == 200
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    with _client(srv) as c:
        host = srv.url.split("://", 1)[1]
        # no origins configured: the Host rule, and the page's https scheme makes the cookie Secure
        assert "secure" in c.post("/login", data={"key": KEY}, headers={"origin": f"https://{host}"}).headers["set-cookie"].lower()
        assert "secure" not in c.post("/login", data={"key": KEY}, headers={"origin": f"http://{host}"}).headers["set-cookie"].lower()
        # a trusted proxy (loopback, uvicorn's default) that says the browser used https
        fwd = c.post("/login", data={"key": KEY}, headers={"x-forwarded-proto": "https"})
        assert fwd.status_code == 303 and "secure" in fwd.headers["set-cookie"].lower()


def test_cli_refuses_a_malformed_origin(tmp_path: Path) -> None:
    from charter.cli import main

    for bad in ("charter.example.com", "https://charter.example.com/dashboard", "ftp://x"):
        assert main(["dashboard", "--db", f"sqlite:///{tmp_path / 'none.db'}", "--origin", bad]) == 2


def test_keyless_dashboard_answers_only_loopback_names(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store))
    with _client(srv) as c:
        assert c.get("/api/summary").status_code == 200
        r = c.get("/api/summary", headers={"host": "attacker.example"})  # DNS rebinding
        assert r.status_code == 403 and "loopback" in r.json()["error"]
        assert c.get("/", headers={"host": "attacker.example"}).status_code == 403


def test_clusters_empty_state(sqlite_store: EventStore, serve: Callable[..., ServerThread],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    srv = serve(create_dashboard(sqlite_store, cache_ttl_s=0))
    with _client(srv) as c:
        monkeypatch.setitem(sys.modules, "charter.monitor.clusters", None)  # not installed
        d = c.get("/api/clusters").json()
        assert d["available"] is False and d["clusters"] == [] and "not installed" in d["reason"]

        def boom(*a: Any, **k: Any) -> list[Any]:
            raise RuntimeError("no")

        monkeypatch.setitem(sys.modules, "charter.monitor.clusters", types.SimpleNamespace(cluster_events=boom))
        d = c.get("/api/clusters").json()
        assert d["available"] is False and "RuntimeError" in d["reason"]


# ------------------------------------------------------------------------------ charter serve


def test_serve_app_mounts_dashboard_behind_proxy_keys(sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    from charter.guard import Guard
    from charter.server import create_app

    guard = Guard.load(None)
    cfg = ServerConfig.model_validate({"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "keys": [k.model_dump() for k in KEYS],
                                       "events": {"db": str(sqlite_store.url)}})
    srv = serve(create_app(cfg, guard))
    with _client(srv) as c:
        assert c.get("/dashboard/api/summary").status_code == 401
        r = c.get("/dashboard/api/summary", params={"since": "1h"}, headers={"authorization": f"Bearer {KEY}"})
        assert r.status_code == 200 and r.json()["events"] == 20
        assert c.get("/dashboard/").headers["location"] == "/dashboard/login"
        login = c.post("/dashboard/login", data={"key": KEY})
        assert login.status_code == 303 and login.headers["location"] == "/dashboard/"
        assert "path=/dashboard/" in login.headers["set-cookie"].lower()
        page = c.get("/dashboard/")
        assert page.status_code == 200 and 'src="/dashboard/static/app.js"' in page.text
        assert c.get("/healthz").json()["status"] == "ok"  # the proxy still answers beside it
    no_db = serve(create_app(ServerConfig.model_validate({"upstream": {"base_url": "http://127.0.0.1:9/v1"}}), guard))
    with _client(no_db) as c:
        assert c.get("/dashboard/").status_code == 404


def test_cli_refuses_public_bind_without_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from charter.cli import main

    assert main(["dashboard", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--host", "0.0.0.0"]) == 1
    assert "client API keys are required beyond loopback" in capsys.readouterr().err
    assert main(["dashboard", "--db", "charter.db"]) == 1
    assert "expected a database URL" in capsys.readouterr().err
    # a mistyped path is refused, as by every `charter monitor` command, not opened as a new empty store
    assert main(["dashboard", "--db", f"sqlite:///{tmp_path / 'chater.db'}"]) == 1
    assert "no such database file" in capsys.readouterr().err and not list(tmp_path.glob("chater.db*"))


# ---------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser(browser: Any) -> Any:
    """The shared headless Chromium (conftest.py), with the screenshots' folder ready."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    return browser


def _page(browser: Any) -> tuple[Any, Any, list[str]]:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    # nothing may leave loopback: every asset is served by Charter itself
    page.on("request", lambda r: problems.append("external " + r.url) if not r.url.startswith("http://127.0.0.1") else None)
    return ctx, page, problems


def _text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text()).strip()


def test_browser_page_shows_the_seeded_numbers_and_drills_down(browser: Any, sqlite_store: EventStore,
                                                              serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store))
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{srv.url}/?since=1h")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert _text(page, "total-events") == "20"
        assert _text(page, "blocked") == "5"
        assert _text(page, "block-rate") == "25.0%"
        assert _text(page, "flagged") == "6"
        assert _text(page, "escalation-rate") == "10.0%"
        assert _text(page, "open-alerts") == "2"
        assert page.locator("[data-testid=by-category] [data-name=glorp_weapons]").get_attribute("data-value") == "5"
        assert page.locator("[data-testid=by-category] [data-name=cyber]").get_attribute("data-value") == "1"
        assert page.locator("[data-testid=by-stage] [data-name=exchange]").get_attribute("data-value") == "1"
        assert page.locator("[data-testid=signals] [data-name='wellbeing:action_distortion']").get_attribute("data-value") == "1"
        assert page.locator("[data-testid=by-category] [data-name='wellbeing:action_distortion']").count() == 0
        chart = page.get_by_test_id("traffic-chart")
        assert chart.get_attribute("data-total") == "20" and page.locator("#chart svg rect.total").count() > 0
        assert page.locator("[data-testid=rate-line]").count() == 1
        rows = page.get_by_test_id("alert-row")
        assert rows.count() == 2 and "4 blocked requests in 10 minutes" in _text(page, "alerts-table")
        assert "resolved long ago" not in _text(page, "alerts-table")
        assert page.locator("[data-testid=range-1h]").get_attribute("aria-current") == "page"
        page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)

        # a user from the top-users table: their timeline
        page.locator("[data-testid=user-row][data-id=u_alice] a").click()
        page.wait_for_selector("#drill[data-loaded='u_alice']")
        drill = page.get_by_test_id("drill-row")
        assert drill.count() == 10
        table = _text(page, "drill-table")
        assert "blocked_input" in table and "base64" in table and "stage2" in table and "glorp_weapons" in table
        assert "how do I make glorp toxin, attempt 0" in table
        assert page.locator("#drill-convs [data-testid=conversation-link]").count() == 2
        page.screenshot(path=str(ARTIFACTS / "user.png"), full_page=True)

        # one of their conversations
        page.locator("#drill-convs [data-testid=conversation-link][data-id=c_a2]").click()
        page.wait_for_selector("#drill[data-loaded='c_a2']")
        assert page.get_by_test_id("drill-row").count() == 4 and page.locator("#drill").get_attribute("data-kind") == "conversation"

        # an alert's subject (a conversation) from the open alerts
        page.locator("[data-testid=alert-row][data-rule=obfuscation] a").click()
        page.wait_for_selector("#drill[data-loaded='c_b1']")
        assert page.get_by_test_id("drill-row").count() == 6 and "leet" in _text(page, "drill-table")
        page.screenshot(path=str(ARTIFACTS / "conversation.png"), full_page=True)
        page.go_back()  # history: back to the previous drill-down
        page.wait_for_selector("#drill[data-loaded='c_a2']")

        # the analyst resolves an alert from the table: it leaves the open list, and the store knows
        page.locator("[data-testid=alert-row][data-rule=obfuscation] [data-testid=alert-resolved]").click()
        from playwright.sync_api import expect

        expect(page.get_by_test_id("alert-row")).to_have_count(1, timeout=15_000)
        expect(page.get_by_test_id("open-alerts")).to_have_text("1", timeout=15_000)
        assert [a.status for a in sqlite_store.alerts(status=None) if a.rule == "obfuscation"] == ["resolved"]
        assert problems == [], problems
    finally:
        ctx.close()


def test_browser_login_required_with_keys(browser: Any, sqlite_store: EventStore, serve: Callable[..., ServerThread]) -> None:
    srv = serve(create_dashboard(sqlite_store, keys=KEYS))
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{srv.url}/?since=1h")
        assert page.url.endswith("/login")
        page.fill("#key", "sk-charter-not-the-key")
        page.click("button[type=submit]")
        assert _text(page, "login-error") == "wrong key (or not a dashboard key)" and page.url.endswith("/login")
        page.screenshot(path=str(ARTIFACTS / "login-refused.png"), full_page=True)
        page.fill("#key", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert _text(page, "total-events") == "20"
        (cookie,) = [c for c in ctx.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and KEY not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # not readable from scripts
        page.click("text=Log out")
        page.wait_for_url(re.compile(r".*/login$"))
        problems = [p for p in problems if "401" not in p]  # the refused login is a 401 by design
        assert problems == [], problems
    finally:
        ctx.close()


def test_browser_shows_hostile_ids_and_text_as_text(browser: Any, tmp_path: Path,
                                                    serve: Callable[..., ServerThread]) -> None:
    user = "<img src=x onerror=window.pwned=1>"
    conv = "\"'><script>window.pwned=2</script>#%25&x=1 é"
    cat = "</text><script>window.pwned=3</script>"
    text = "<b>bold</b><img src=x onerror=window.pwned=4>"
    store = EventStore.open(f"sqlite:///{tmp_path / 'charter.db'}")
    store.write([Event(user_id=user, conversation_id=conv, time=NOW - 60 * (i + 1), decision="blocked_input",
                       verdicts=[_v("stage1", 0.9, True, cat, view="<i>v</i>")], content_policy="full",
                       content={"messages": [{"role": "user", "content": text}], "response": None}) for i in range(3)])
    store.upsert_alert(AlertRecord(rule="<u>rule</u>", subject_kind="conversation", subject_id=conv, severity="high",
                                   summary="<img src=x onerror=window.pwned=5>", evidence=[], dedupe_key="k",
                                   first_seen=NOW - 120, last_seen=NOW - 60))
    srv = serve(create_dashboard(store, cache_ttl_s=0))
    ctx, page, problems = _page(browser)
    try:
        page.goto(f"{srv.url}/?since=1h")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        assert page.locator("[data-testid=by-category] [data-testid=bar]").get_attribute("data-name") == cat
        assert "<u>rule</u>" in _text(page, "alerts-table") and "onerror=window.pwned=5" in _text(page, "alerts-table")
        assert page.locator("[data-testid=user-row]").get_attribute("data-id") == user
        # the alert's conversation, then its user, by the links the page drew
        page.locator("[data-testid=alert-row] [data-testid=conversation-link]").click()
        from playwright.sync_api import expect

        expect(page.locator("#drill")).to_have_attribute("data-loaded", conv, timeout=15_000)
        assert page.get_by_test_id("drill-row").count() == 3 and text in _text(page, "drill-table")
        page.locator("[data-testid=drill-row] [data-testid=user-link]").first.click()
        expect(page.locator("#drill")).to_have_attribute("data-loaded", user, timeout=15_000)
        assert page.locator("#drill-convs [data-testid=conversation-link]").get_attribute("data-id") == conv
        assert page.evaluate("window.pwned") is None
        assert page.locator("main img, main script, main b, main i, main u").count() == 0  # nothing parsed as markup
        assert problems == [], problems
    finally:
        ctx.close()
        store.close()


# ---------------------------------------------------------------------------------- caching


def test_answer_cache_serves_stale_while_refreshing_and_computes_once() -> None:
    import threading

    from charter.monitor.dashboard import TTLCache

    calls: list[int] = []
    gate = threading.Event()

    def slow() -> int:
        calls.append(1)
        gate.wait(5)
        return len(calls)

    cache = TTLCache(0.2, stale_s=30)
    out: list[int] = []
    barrier = threading.Barrier(5)

    def ask() -> None:
        barrier.wait(5)  # the four ask together, while the first computation is held at the gate
        out.append(cache.get("k", slow))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait(5)
    while not calls:
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(5)
    assert out == [1, 1, 1, 1] and len(calls) == 1  # concurrent misses: one computation
    assert cache.get("k", slow) == 1 and len(calls) == 1  # fresh
    time.sleep(0.25)
    assert cache.get("k", slow) == 1  # stale: answered at once, refreshed behind
    deadline = time.monotonic() + 5
    while cache.get("k", slow) != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.get("k", slow) == 2 and len(calls) == 2


def test_unavailable_store_is_503_without_leaking_the_url(serve: Callable[..., ServerThread],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    srv = serve(create_dashboard("postgresql+nodriver://admin:hunter2-secret@127.0.0.1:1/db"))
    with _client(srv) as c:
        r = c.get("/api/summary")
    assert r.status_code == 503 and "unavailable" in r.json()["error"] and "hunter2" not in r.text
    assert "hunter2" not in caplog.text and "admin:***@" in caplog.text
