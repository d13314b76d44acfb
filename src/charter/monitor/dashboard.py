"""The monitoring dashboard: one HTML page and a small read-only JSON API over an :class:`EventStore`.

    app = create_dashboard(EventStore.open("sqlite:///charter.db"), keys=config.keys)

Routes (relative to where the app is mounted): ``/`` the page, ``/login`` and ``/logout``,
``/static/*`` its script and style (no CDN: everything is served from here), and under ``/api/``:
``summary``, ``timeseries``, ``users``, ``alerts``, ``events?user_id=|conversation_id=`` and
``clusters``. Every query takes ``?since=1h|24h|7d`` and is bounded by a time window and a row limit,
and aggregate answers are cached for a few seconds, so the page stays fast on a large store.

Access: with client keys configured (or ``require_keys``) every request needs ``Authorization:
Bearer KEY`` or the session cookie set by the login form (an HMAC-signed token naming the key's
hash prefix and an expiry, never the key). API calls without either get 401 JSON; the page
redirects to the login form. Without keys the dashboard answers only loopback clients and loopback
``Host`` names (against DNS rebinding).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import anyio
import jinja2
from markupsafe import escape
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from charter.monitor.store import EventStore, StoredEvent, StoreError
from charter.server.auth import KeyStore, Principal
from charter.server.body import BodyTooLarge, read_body
from charter.server.config import ClientKey, Rate, is_loopback

log = logging.getLogger("charter.monitor.dashboard")

#: ``?since=`` values: (window seconds, chart bucket seconds)
#: (hour buckets from an hour boundary let the store answer from its hourly rollups)
RANGES: dict[str, tuple[int, int]] = {"1h": (3600, 60), "24h": (86_400, 3600), "7d": (604_800, 3600)}
DEFAULT_RANGE = "24h"
COOKIE = "charter_dashboard"
MAX_USERS = 100
MAX_EVENTS = 500
EVENT_BATCH = 10  # rows (whole stored conversations) read at a time for a drill-down
MAX_ALERTS = 200
MAX_CLUSTER_EVENTS = 5000
MAX_TEXT = 300
#: worker threads the dashboard's queries may hold at once: its own pool, so that a database that stopped
#: answering cannot take every thread of the proxy it is mounted in (whose guard checks need them)
MAX_THREADS = 8
#: seconds a login form or an alert change has to arrive whole: a client sending a byte at a time held a
#: connection and a task for as long as it liked
BODY_TIMEOUT_S = 10.0
_ASSETS = "dashboard_assets"
_STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
#: every JSON answer: never cached, never sniffed as another type, never framed or run as a document
_API_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff",
                "content-security-policy": "default-src 'none'; frame-ancestors 'none'"}


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


async def _small_body(request: Request, limit: int, too_large: str = "body too large") -> bytes:
    """A request body of at most ``limit`` bytes (413), whole within ``BODY_TIMEOUT_S`` (408)."""
    try:
        return await read_body(request, limit, BODY_TIMEOUT_S)
    except BodyTooLarge:
        raise _HttpError(413, too_large) from None
    except TimeoutError:
        raise _HttpError(408, f"the body did not arrive within {BODY_TIMEOUT_S:g} s") from None


def _asset(name: str) -> str:
    return (resources.files("charter.monitor") / _ASSETS / name).read_text(encoding="utf-8")


class TTLCache:
    """Recent answers, shared by concurrent requests (thread-safe, bounded in entries and age).

    A fresh answer (younger than ``ttl_s``) is returned as is; a stale one (younger than
    ``stale_s``) is returned at once while one background thread recomputes it; on a miss, one
    caller computes and concurrent callers for the same key wait for its answer.
    """

    def __init__(self, ttl_s: float, stale_s: float | None = None, max_entries: int = 128) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self.stale_s = max(ttl_s, stale_s if stale_s is not None else 60 * ttl_s)
        self._d: dict[Any, tuple[float, Any]] = {}
        self._pending: dict[Any, threading.Event] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by clear()

    def _compute(self, key: Any, compute: Callable[[], Any], done: threading.Event) -> Any:
        try:
            with self._lock:
                gen = self._generation
            value = compute()
            with self._lock:
                if len(self._d) >= self.max_entries:
                    self._d.clear()
                if gen == self._generation:  # begun before a clear(): it may predate the write, so not kept
                    self._d[key] = (time.monotonic(), value)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            done.set()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        if self.ttl_s <= 0:
            return compute()
        while True:
            with self._lock:
                hit, pending = self._d.get(key), self._pending.get(key)
                age = time.monotonic() - hit[0] if hit is not None else math.inf
                if age < self.ttl_s or (age < self.stale_s and pending is not None):
                    return hit[1]  # type: ignore[index]
                if pending is None:
                    done = self._pending[key] = threading.Event()
                    if age < self.stale_s:  # refresh in the background, answer with what we have
                        threading.Thread(target=self._refresh, args=(key, compute, done), daemon=True).start()
                        return hit[1]  # type: ignore[index]
                    break
            pending.wait(300)  # another request is computing this answer
        return self._compute(key, compute, done)

    def clear(self) -> None:
        """Forget every answer (after a write, such as an alert's status)."""
        with self._lock:
            self._d.clear()
            self._generation += 1

    def _refresh(self, key: Any, compute: Callable[[], Any], done: threading.Event) -> None:
        try:
            self._compute(key, compute, done)
        except Exception:
            log.exception("dashboard: background refresh failed")


class SessionSigner:
    """Signs and checks session tokens ``v1.<key id>.<expiry>.<hmac>`` (the key itself is never in them)."""

    def __init__(self, secret: bytes, ttl_s: float, max_revoked: int = 10_000) -> None:
        self._secret, self.ttl_s, self.max_revoked = secret, ttl_s, max_revoked
        self._revoked: dict[str, float] = {}  # logged-out tokens, until they expire
        self._lock = threading.Lock()

    def revoke(self, token: str) -> None:
        """End a session before its expiry (logout)."""
        now = time.time()
        with self._lock:
            if len(self._revoked) >= self.max_revoked:
                self._revoked = {t: exp for t, exp in self._revoked.items() if exp > now}
                if len(self._revoked) >= self.max_revoked:  # bounded: drop the oldest half
                    self._revoked = dict(sorted(self._revoked.items(), key=lambda kv: kv[1])[self.max_revoked // 2:])
            self._revoked[token] = now + self.ttl_s

    def _mac(self, body: str) -> str:
        d = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(d).decode().rstrip("=")

    def sign(self, key_id: str, now: float | None = None) -> str:
        body = f"v1.{key_id}.{int((now or time.time()) + self.ttl_s)}"
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str | None, now: float | None = None) -> str | None:
        """The key id in a valid, unexpired token, else None."""
        if not token or len(token) > 256:
            return None
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[2].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(self._mac(body), parts[3]) or token in self._revoked:
            return None
        return parts[1] if int(parts[2]) > (now or time.time()) else None


class LoginThrottle:
    """At most ``max_failures`` wrong keys per client address per minute (bounded memory)."""

    def __init__(self, max_failures: int = 10, window_s: float = 60.0, max_clients: int = 10_000) -> None:
        self.max_failures, self.window_s, self.max_clients = max_failures, window_s, max_clients
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._fails.get(client, []) if now - t < self.window_s]
            if recent:
                self._fails[client] = recent
            else:  # only clients with recent failures take memory (a check alone must not add one)
                self._fails.pop(client, None)
            return len(recent) >= self.max_failures

    def fail(self, client: str) -> None:
        with self._lock:
            if len(self._fails) >= self.max_clients:
                self._fails.clear()
            self._fails.setdefault(client, []).append(time.monotonic())


class DashboardAuth:
    """Who may see the dashboard: the keys marked ``dashboard: true`` (operators), as a bearer key or a
    signed session cookie. Once any key is configured, a key is required, and other client keys are
    refused: the dashboard shows every client's traffic and can acknowledge the alerts about them."""

    def __init__(self, keys: Sequence[ClientKey], require_keys: bool, secret: bytes | None, session_ttl_s: float,
                 origins: Sequence[str] = ()) -> None:
        #: the public origins the dashboard is served at behind a reverse proxy (else: this Host)
        self.origins = {normalise_origin(o) for o in origins}
        ops = [k for k in keys if k.dashboard]
        self.keystore = KeyStore(ops, Rate(), require_keys or bool(keys))
        self.required = self.keystore.required
        self.no_operator_keys = self.required and not ops
        self._key_ids = {k.sha256[:16] for k in ops}
        self.signer = SessionSigner(secret or secrets.token_bytes(32), session_ttl_s)
        self.throttle = LoginThrottle()

    def principal(self, request: Request) -> str | None:
        """The key id (hash prefix) of an authenticated request, "anonymous" when no key is required."""
        if not self.required:
            return "anonymous"
        authz = request.headers.get("authorization")
        if authz:
            client = request.client.host if request.client else "?"
            if self.throttle.blocked(client):  # bearer guesses count like form logins: refused while blocked
                return None
            p: Principal | None = self.keystore.authenticate(authz)
            if p is None:
                self.throttle.fail(client)
            return p.key_id if p else None
        kid = self.signer.verify(request.cookies.get(COOKIE))
        return kid if kid in self._key_ids else None  # a key removed from the config ends its sessions

    def same_origin(self, request: Request) -> bool:
        """A request's Origin, when sent, is the dashboard's own: one of ``origins`` when configured (a
        reverse proxy's public address), else this Host."""
        origin = request.headers.get("origin")
        if not origin:
            return True
        if self.origins:
            return normalise_origin(origin) in self.origins
        return origin.split("://", 1)[-1] == request.headers.get("host")

    def check_open_access(self, request: Request) -> None:
        """Without keys: loopback clients and loopback Host names only."""
        if self.required:
            return
        client = request.client.host if request.client else ""
        host = request.headers.get("host") or ""
        host = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if not is_loopback(client) or not (is_loopback(host) or host == "localhost"):
            raise _HttpError(403, "this dashboard has no client keys configured, so it answers only on loopback "
                                  "(http://127.0.0.1:PORT); configure keys to serve it further")


def normalise_origin(origin: str) -> str:
    """``https://Host.example:443/`` -> ``https://host.example``: how a browser writes an Origin."""
    o = origin.strip().rstrip("/").lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if o.startswith(scheme) and o.endswith(port):
            o = o[: -len(port)]
    return o


def _since(request: Request) -> tuple[str, float, int]:
    """The range label, its start (aligned to the chart bucket) and the bucket size."""
    label = request.query_params.get("since", DEFAULT_RANGE)
    if label not in RANGES:
        raise _HttpError(400, f"since: expected one of {', '.join(RANGES)}, got {label[:20]!r}")
    window, bucket = RANGES[label]
    return label, math.floor((time.time() - window) / bucket) * bucket, bucket


def _limit(request: Request, default: int, cap: int) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() accepts "²", which int() refuses; int() also refuses 4300+ digits
    if not (raw.isascii() and raw.isdigit()) or not raw.strip("0"):
        raise _HttpError(400, f"limit: expected a positive integer, got {raw[:20]!r}")
    return cap if len(raw.lstrip("0")) > 9 else min(int(raw), cap)


def _event_json(e: StoredEvent) -> dict[str, Any]:
    text = e.text
    return {"ts": e.ts, "request_id": e.request_id, "user_id": e.user_id, "conversation_id": e.conversation_id,
            "decision": e.decision, "flagged": e.flagged, "escalated": e.escalated, "score": e.score,
            "threshold": e.threshold, "category": e.category, "stage": e.stage, "view": e.view, "model": e.model,
            "text": text[:MAX_TEXT] if text else None}


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _cluster_json(c: Any) -> dict[str, Any]:
    d = dataclasses.asdict(c) if dataclasses.is_dataclass(c) and not isinstance(c, type) else dict(vars(c))
    d["examples"] = [str(x)[:MAX_TEXT] for x in (d.get("examples") or [])[:3]]
    d["top_terms"] = [str(x) for x in (d.get("top_terms") or [])[:10]]
    return {k: d.get(k) for k in ("id", "size", "label", "top_terms", "examples", "categories", "users",
                                   "first_ts", "last_ts")}


class Dashboard:
    """The dashboard's routes over one store (opened lazily when given a URL)."""

    def __init__(self, store: EventStore | str, auth: DashboardAuth, cache_ttl_s: float) -> None:
        self._store, self._url = (store, None) if isinstance(store, EventStore) else (None, store)
        self._lock = threading.Lock()
        self.auth = auth
        self.cache = TTLCache(cache_ttl_s)
        self.clusters_cache = TTLCache(max(cache_ttl_s, 60.0) if cache_ttl_s > 0 else 0)
        env = jinja2.Environment(loader=jinja2.DictLoader({n: _asset(n) for n in ("index.html", "login.html")}),
                                 autoescape=True)
        self.templates = {n: env.get_template(n) for n in ("index.html", "login.html")}
        self.static = {n: _asset(n) for n in _STATIC}
        self._limiter: anyio.CapacityLimiter | None = None

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._limiter is None:  # made on first use: it belongs to the running event loop
            self._limiter = anyio.CapacityLimiter(MAX_THREADS)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    @property
    def store(self) -> EventStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    assert self._url is not None
                    try:
                        self._store = EventStore.open(self._url)
                    except StoreError:  # its message may hold the URL's password: neither logged nor sent
                        log.error("dashboard: cannot open the monitoring store %s (retried on the next request)",
                                  _safe_url(self._url))
                        raise _HttpError(503, "the monitoring store is unavailable (see the server log)") from None
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # -- plumbing ------------------------------------------------------------------------
    @staticmethod
    def base(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def api(self, fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """A JSON endpoint: authenticated, errors as ``{"error": ...}``, never cached by the browser."""

        async def endpoint(request: Request) -> Response:
            try:
                self.auth.check_open_access(request)
                if self.auth.principal(request) is None:
                    raise _HttpError(401, "authentication required: send 'Authorization: Bearer <client key>' "
                                          "or log in at ./login")
                body = await self._in_thread(fn, request)
                status = 200
            except _HttpError as e:
                body, status = {"error": e.message}, e.status
            except Exception:
                log.exception("dashboard API %s failed", request.url.path)
                body, status = {"error": "internal error (see the server log)"}, 500
            headers = dict(_API_HEADERS)
            if status == 401:
                headers["www-authenticate"] = 'Bearer realm="charter"'
            return JSONResponse(body, status, headers=headers)

        return endpoint

    def _html(self, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        h = {"content-security-policy": _CSP, "x-content-type-options": "nosniff", "referrer-policy": "same-origin",
             "x-frame-options": "DENY", "cache-control": "no-store", **(headers or {})}
        return HTMLResponse(body, status, headers=h)

    # -- pages ---------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        try:
            self.auth.check_open_access(request)
            label, _, _ = _since(request)
        except _HttpError as e:
            return self._html(f"<h1>{e.status}</h1><p>{escape(e.message)}</p>", e.status)
        base = self.base(request)
        if self.auth.principal(request) is None:
            return RedirectResponse(f"{base}/login", 303)
        return self._html(self.templates["index.html"].render(base=base, since=label, ranges=list(RANGES),
                                                              auth=self.auth.required))

    async def login(self, request: Request) -> Response:
        try:
            self.auth.check_open_access(request)
        except _HttpError as e:
            return self._html(f"<h1>{e.status}</h1><p>{escape(e.message)}</p>", e.status)
        base = self.base(request)
        if not self.auth.required:
            return RedirectResponse(f"{base}/", 303)
        if request.method in ("GET", "HEAD"):  # a HEAD (a health check) counted as a failed login
            return self._html(self.templates["login.html"].render(base=base, error=None))
        client = request.client.host if request.client else "?"
        # Browsers send the page's origin on a same-origin form post (the Referrer-Policy is
        # same-origin, not no-referrer, which would make them send "null"); "null" comes from
        # sandboxed frames and data: or file: pages, so it is refused like another site.
        if not self.auth.same_origin(request):
            return self._html(self.templates["login.html"].render(base=base, error="cross-site login refused"), 403)
        if self.auth.throttle.blocked(client):
            return self._html(self.templates["login.html"].render(
                base=base, error="too many failed attempts; wait a minute"), 429, {"retry-after": "60"})
        try:
            body = await _small_body(request, 4096, "form too large")
        except _HttpError as e:
            return self._html(self.templates["login.html"].render(base=base, error=e.message), e.status,
                              {"connection": "close"} if e.status == 408 else None)
        key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        p = self.auth.keystore.authenticate(f"Bearer {key}") if key else None
        if p is None:
            self.auth.throttle.fail(client)
            log.warning("dashboard: failed login from %s", client)  # never the submitted key
            why = ("no key may use the dashboard: give an operator's key dashboard: true in charter.yaml"
                   if self.auth.no_operator_keys else "wrong key (or not a dashboard key)")
            return self._html(self.templates["login.html"].render(base=base, error=why), 401)
        resp = RedirectResponse(f"{base}/", 303)
        resp.set_cookie(COOKIE, self.auth.signer.sign(p.key_id), max_age=int(self.auth.signer.ttl_s),
                        path=f"{base}/", httponly=True, samesite="strict",
                        # behind a proxy that ends TLS the request is plain http, but the browser's page is not
                        secure=request.url.scheme == "https" or request.headers.get("origin", "").startswith("https://"))
        return resp

    async def logout(self, request: Request) -> Response:
        if not self.auth.same_origin(request):  # another site's form must not end the analyst's session
            return self._html("<h1>403</h1><p>cross-site request refused</p>", 403)
        token = request.cookies.get(COOKIE)
        if token and self.auth.signer.verify(token):
            self.auth.signer.revoke(token)
        resp = RedirectResponse(f"{self.base(request)}/login", 303)
        resp.delete_cookie(COOKIE, path=f"{self.base(request)}/", httponly=True, samesite="strict")
        return resp

    async def static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return Response("not found", 404, media_type="text/plain")
        return Response(self.static[name], media_type=_STATIC[name],
                        headers={"cache-control": "no-cache", "x-content-type-options": "nosniff"})

    async def set_alert_status(self, request: Request) -> Response:
        """``POST /api/alerts/{id}/status`` with ``{"status": "acknowledged" | "resolved" | "open"}``.

        JSON only (a cross-site form cannot send it without a CORS preflight, which is refused), the
        Origin, when sent, must be this host, and the session cookie is SameSite=Strict.
        """
        try:
            self.auth.check_open_access(request)
            p = self.auth.principal(request)
            if p is None:
                raise _HttpError(401, "authentication required")
            if not self.auth.same_origin(request):
                raise _HttpError(403, "cross-site request refused")
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                raise _HttpError(415, "send the body as application/json")
            raw = await _small_body(request, 1024)
            try:
                status = json.loads(raw).get("status")
            except (ValueError, AttributeError):
                raise _HttpError(400, 'expected {"status": "acknowledged" | "resolved" | "open"}') from None
            if status not in ("open", "acknowledged", "resolved"):
                raise _HttpError(400, f"status: expected open, acknowledged or resolved, got {str(status)[:20]!r}")
            raw_id = request.path_params["alert_id"]
            if not (raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 19):  # int() takes "１" and " 1"
                raise _HttpError(404, "no such alert")
            alert_id = int(raw_id)
            if not await self._in_thread(lambda: self.store.set_alert_status(alert_id, status)):  # opens it too
                raise _HttpError(404, "no such alert")
            log.info("dashboard: alert %d set to %s by key %s", alert_id, status, p)
            self.cache.clear()
            return JSONResponse({"id": alert_id, "status": status}, headers=_API_HEADERS)
        except _HttpError as e:  # a client too slow to send its body does not keep its connection
            return JSONResponse({"error": e.message}, e.status,
                                headers={**_API_HEADERS, **({"connection": "close"} if e.status == 408 else {})})

    # -- API -----------------------------------------------------------------------------
    def summary(self, request: Request) -> dict[str, Any]:
        label, since, _ = _since(request)
        return self.cache.get(("summary", since), lambda: {**self.store.summary(since), "range": label})

    def timeseries(self, request: Request) -> dict[str, Any]:
        label, since, bucket = _since(request)

        def compute() -> dict[str, Any]:
            rows = {int(round((r["t"] - since) / bucket)): r for r in self.store.timeseries(since, bucket)}
            n = int((time.time() - since) // bucket) + 1
            out = []
            for i in range(n):
                r = rows.get(i) or {"total": 0, "blocked": 0, "flagged": 0, "escalated": 0}
                out.append({"t": since + i * bucket, "total": r["total"], "blocked": r["blocked"],
                            "flagged": r["flagged"], "escalated": r["escalated"],
                            "block_rate": r["blocked"] / r["total"] if r["total"] else None})
            return {"range": label, "since": since, "bucket_s": bucket, "buckets": out}

        return self.cache.get(("timeseries", since), compute)

    def users(self, request: Request) -> dict[str, Any]:
        label, since, _ = _since(request)
        n = _limit(request, 20, MAX_USERS)
        return self.cache.get(("users", since, n), lambda: {"range": label, "users": self.store.top_users(n, since)})

    def alerts(self, request: Request) -> dict[str, Any]:
        status = request.query_params.get("status", "open")
        if status not in ("open", "acknowledged", "resolved"):
            raise _HttpError(400, f"status: expected open, acknowledged or resolved, got {status[:20]!r}")
        n = _limit(request, 50, MAX_ALERTS)
        return {"status": status,
                "alerts": [{k: v for k, v in a.as_dict().items() if k != "evidence"} | {"evidence": len(a.evidence)}
                           for a in self.store.alerts(status=status, limit=n)]}

    def events(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        user, conv = q.get("user_id"), q.get("conversation_id")
        if bool(user) == bool(conv):
            raise _HttpError(400, "pass exactly one of user_id or conversation_id")
        subject = (user or conv or "")[:200]
        label, since, _ = _since(request)
        n = _limit(request, 200, MAX_EVENTS)
        kw = {"user_id": subject} if user else {"conversation_id": subject}
        # each event is cut to its row as read: a whole stored conversation is up to megabytes, and
        # holding n of them at once could take the proxy the dashboard is mounted in down
        evs = [_event_json(e) for e in self.store.iter_events(since=since, limit=n + 1, newest_first=True,
                                                              batch=EVENT_BATCH, **kw)]
        alerts = self.store.alerts(status=None, subject_kind="user" if user else "conversation", subject_id=subject,
                                   limit=20)
        convs: dict[str, int] = {}
        for e in evs[:n]:
            if e["conversation_id"]:
                convs[e["conversation_id"]] = convs.get(e["conversation_id"], 0) + 1
        return {"kind": "user" if user else "conversation", "id": subject, "range": label,
                "events": evs[:n], "truncated": len(evs) > n,
                "conversations": convs,
                "alerts": [{k: v for k, v in a.as_dict().items() if k != "evidence"} for a in alerts]}

    def clusters(self, request: Request) -> dict[str, Any]:
        label, since, _ = _since(request)
        try:
            from charter.monitor.clusters import cluster_events
        except ImportError:
            return {"available": False, "reason": "clustering is not installed in this version", "clusters": []}

        def compute() -> dict[str, Any]:
            try:
                cs = cluster_events(self.store, since=since, limit=MAX_CLUSTER_EVENTS)
            except Exception as e:
                log.exception("dashboard: clustering failed")
                return {"available": False, "reason": f"clustering failed: {type(e).__name__}", "clusters": []}
            return {"available": True, "range": label, "clusters": [_cluster_json(c) for c in cs[:50]]}

        return self.clusters_cache.get(("clusters", since), compute)


def create_dashboard(store: EventStore | str, *, keys: Sequence[ClientKey] = (), require_keys: bool = False,
                     session_secret: bytes | None = None, session_ttl_s: float = 12 * 3600,
                     cache_ttl_s: float = 5.0, origins: Sequence[str] = ()) -> Starlette:
    """The dashboard as an ASGI app over ``store`` (an open store, or a URL opened on first use).

    ``keys`` are the proxy's client keys (``config.keys``): those marked ``dashboard: true`` may log in;
    with none at all and ``require_keys`` false the dashboard is open, but only to loopback. ``session_secret`` signs login cookies (random per
    process by default, so a restart logs everyone out). ``origins`` are the public origins of a
    reverse proxy in front of it (``https://charter.example.com``): logins and alert changes must come
    from one of them, since such a proxy need not pass the browser's Host on.
    """
    d = Dashboard(store, DashboardAuth(keys, require_keys, session_secret, session_ttl_s, origins), cache_ttl_s)
    routes = [
        Route("/", d.index, methods=["GET"]),
        Route("/login", d.login, methods=["GET", "POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/static/{name}", d.static_file, methods=["GET"]),
    ]
    for name in ("summary", "timeseries", "users", "alerts", "events", "clusters"):
        routes.append(Route(f"/api/{name}", d.api(getattr(d, name)), methods=["GET"]))
    routes.append(Route("/api/alerts/{alert_id}/status", d.set_alert_status, methods=["POST"]))
    app = Starlette(routes=routes)
    app.state.dashboard = d
    return app
