"""Alerts raised by the monitoring rules, and the sinks they go to (log, webhook; the store is the engine's).

An :class:`Alert` names its rule, its subject (a user, a conversation, or ``global``), a severity,
a one-line summary, the rule's numbers (``stats``) and the evidence events (request ids, times,
scores, categories, views; never message text). Its :attr:`Alert.dedupe_key` is stable across
evaluations, so the store folds a re-raised alert into the open one instead of adding another.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from charter.endpoints import valid_http_url

log = logging.getLogger("charter.monitor")

Severity = Literal["low", "medium", "high"]
SubjectKind = Literal["user", "conversation", "key", "global"]
MAX_DEDUPE = 300  # the store's dedupe_key column
MAX_BACKOFF_S = 30.0  # the longest wait between two attempts of a webhook post
_WAKE_S = 1.0  # how long a webhook attempt whose socket was shut down at its deadline is given to end
#: attempts of one webhook sink still running (left behind at their deadline, resolving a name): past this,
#: an attempt fails at once rather than start another thread
MAX_HANGING_ATTEMPTS = 4
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
#: headers of a signed webhook post (:func:`sign_webhook`)
SIGNATURE_HEADER = "X-Charter-Signature"
TIMESTAMP_HEADER = "X-Charter-Timestamp"
#: how old a signed post a receiver accepts by default (:func:`verify_webhook`)
SIGNATURE_TOLERANCE_S = 300
MIN_SECRET_CHARS = 16


class Alert(BaseModel):
    rule: str
    subject_kind: SubjectKind
    subject_id: str
    severity: Severity = "medium"
    summary: str
    category: str | None = None
    #: evidence events: dicts with request_id, time, user_id, conversation_id, score, category, view, ...
    events: list[dict[str, Any]] = Field(default_factory=list)
    #: the rule's numbers (counts, rates, thresholds) that made it fire
    stats: dict[str, Any] = Field(default_factory=dict)
    first_seen: float = Field(default_factory=time.time)
    last_seen: float = Field(default_factory=time.time)
    #: overrides the default key (rule, subject and category) when a rule needs a finer one
    key: str | None = None
    # set once stored
    id: int | None = None
    status: str = "open"
    count: int = 1

    @property
    def dedupe_key(self) -> str:
        k = self.key or ":".join(p for p in (self.rule, self.subject_kind, self.subject_id, self.category) if p)
        if len(k) > MAX_DEDUPE:
            k = k[: MAX_DEDUPE - 17] + "#" + hashlib.sha256(k.encode()).hexdigest()[:16]
        return k

    def record(self) -> Any:
        """The store's :class:`~charter.monitor.store.AlertRecord` (evidence: a stats entry, then the events)."""
        from charter.monitor.store import AlertRecord

        stats = {"kind": "stats", "category": self.category, **self.stats}
        return AlertRecord(rule=self.rule, subject_kind=self.subject_kind, subject_id=self.subject_id[:200],
                           severity=self.severity, summary=self.summary[:2000], evidence=[stats, *self.events],
                           dedupe_key=self.dedupe_key, first_seen=self.first_seen, last_seen=self.last_seen,
                           count=self.count, status=self.status, id=self.id)

    @classmethod
    def from_record(cls, r: Any) -> Alert:
        stats = next((dict(e) for e in r.evidence if e.get("kind") == "stats"), {})
        stats.pop("kind", None)
        category = stats.pop("category", None)
        return cls(rule=r.rule, subject_kind=r.subject_kind, subject_id=r.subject_id, severity=r.severity,
                   summary=r.summary, category=category, stats=stats,
                   events=[e for e in r.evidence if e.get("kind") != "stats"], first_seen=r.first_seen,
                   last_seen=r.last_seen, key=r.dedupe_key, id=r.id, status=r.status, count=r.count)

    def payload(self) -> dict[str, Any]:
        """The JSON document a webhook receives (and ``charter monitor alerts --json`` prints)."""
        d = self.model_dump(exclude={"key"})
        d["dedupe_key"] = self.dedupe_key
        # the store's bounds, so a receiver gets what the dashboard shows, never an unbounded post
        d["subject_id"], d["summary"] = self.subject_id[:200], self.summary[:2000]
        return d


# ---------------------------------------------------------------------------- sink settings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogSinkSettings(_Strict):
    """Write each new alert to the ``charter.monitor`` logger, one line."""

    type: Literal["log"] = "log"
    level: Literal["info", "warning", "error"] = "warning"


class StoreSinkSettings(_Strict):
    """Keep alerts in the monitoring store (de-duplicated); without it, de-duplication is per process."""

    type: Literal["store"] = "store"


class WebhookSinkSettings(_Strict):
    """POST each new alert as JSON; failed posts are retried with backoff, then logged and dropped."""

    type: Literal["webhook"] = "webhook"
    url: str | None = None
    #: name of an environment variable holding the URL (webhook URLs often embed a secret)
    url_env: str | None = None
    #: header name -> name of the environment variable holding its value (e.g. Authorization)
    headers_env: dict[str, str] = Field(default_factory=dict)
    #: name of an environment variable holding a shared secret: each post is then signed (HMAC-SHA256 over
    #: the timestamp and the body, :func:`sign_webhook`), so the receiver can tell Charter's alerts from
    #: forged or replayed ones (:func:`verify_webhook`)
    secret_env: str | None = None
    #: the most one attempt may take, from connecting to the receiver's status line
    timeout_s: float = Field(5.0, gt=0, le=60)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.5, ge=0, le=30)

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSinkSettings:
        if bool(self.url) == bool(self.url_env):
            raise ValueError("a webhook sink needs exactly one of url or url_env")
        if self.url and not valid_http_url(self.url):  # as url_env's value is checked: else every emit failed
            raise ValueError("url must be an http:// or https:// URL with a valid host and port, no spaces or "
                             "control characters")
        bad = [h for h in self.headers_env if not _HEADER_NAME.fullmatch(h)]
        if bad:  # refused at startup, rather than failing every post at run time
            raise ValueError(f"headers_env: {bad[0][:60]!r} is not a valid HTTP header name")
        return self


SinkSettings = Annotated[LogSinkSettings | StoreSinkSettings | WebhookSinkSettings, Field(discriminator="type")]


# ---------------------------------------------------------------------------- sinks


class AlertSink(Protocol):
    def emit(self, alert: Alert) -> None: ...

    def close(self) -> None: ...


def _one_line(text: str) -> str:
    """``text`` with control characters (line breaks included) shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class LogSink:
    name = "log"

    def __init__(self, level: str = "warning") -> None:
        self.level = logging.getLevelName(level.upper())

    def emit(self, alert: Alert) -> None:
        ids = ", ".join(str(e.get("request_id")) for e in alert.events[:5])
        # ids and summaries carry client-chosen text (a conversation id): one log record, never a forged one
        log.log(self.level, "alert %s [%s] %s %s: %s (evidence: %s)", alert.id or "-", alert.severity, alert.rule,
                _one_line(f"{alert.subject_kind}:{alert.subject_id}"), _one_line(alert.summary), _one_line(ids or "none"))

    def close(self) -> None:
        return None


def _safe_url(url: str) -> str:
    """Scheme and host only: the path and query of a webhook URL may carry a token."""
    try:
        p = urlsplit(url)
        return f"{p.scheme}://{p.hostname or '?'}" + (f":{p.port}" if p.port else "")
    except ValueError:  # a bad port or bracket: say nothing of the URL rather than fail to report
        return "<invalid URL>"


class AlertDeliveryError(Exception):
    """A sink could not deliver an alert; ``retry`` says whether a later attempt may succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class WebhookSink:
    """POSTs :meth:`Alert.payload` as JSON, retrying with backoff; raises :class:`AlertDeliveryError`
    when the alert was not delivered (the engine logs it and tries again at its next evaluation).

    The URL is the operator's and may name an internal host (an internal receiver is the usual case), so
    it is not checked against private addresses; what keeps a receiver from steering the sink elsewhere
    is that redirects are never followed, no proxy is read from the environment, and only the status of
    the answer is read. Errors name the scheme and host only: a path or query may hold a token.
    """

    name = "webhook"  # build_sinks names each one by its place in monitor.sinks

    def __init__(self, url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 5.0,
                 retries: int = 2, backoff_s: float = 0.5, secret: str | None = None) -> None:
        self.url, self.retries, self.backoff_s, self.timeout_s = url, retries, backoff_s, timeout_s
        self._secret = secret.encode("utf-8") if secret else None
        self._lock = threading.Lock()
        self._running = 0  # attempts whose thread has not ended, those left behind at their deadline included
        # a fresh connection per post: _post can then always reach the socket to end an overlong attempt
        self.client = httpx.Client(timeout=timeout_s, headers=headers or {}, trust_env=False,
                                   limits=httpx.Limits(max_keepalive_connections=0))
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_settings(cls, s: WebhookSinkSettings) -> WebhookSink:
        from charter.errors import CharterError

        problems = webhook_problems(s)
        if problems:
            raise CharterError("; ".join(msg for _, msg in problems))
        url = s.url or _env(s.url_env or "")
        headers = {h: _env(env) for h, env in s.headers_env.items()}
        return cls(url, headers=headers, timeout_s=s.timeout_s, retries=s.retries, backoff_s=s.backoff_s,
                   secret=_env(s.secret_env) if s.secret_env else None)

    def emit(self, alert: Alert) -> None:
        body = alert.payload()
        why, retry = "", True
        for attempt in range(self.retries + 1):
            if attempt:  # capped: retries 10 at backoff_s 30 slept 8.5 hours, and the rules with them
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
            try:
                status = self._post(body)
                if status < 300:
                    self.sent += 1
                    return
                why = f"HTTP {status}"
                if 300 <= status < 500 and status not in (408, 429):
                    # the receiver rejects it, or moved (redirects are never followed: they could point
                    # anywhere, headers and all): retrying will not help
                    retry = False
                    break
            except _Overdue:
                why = f"no answer within {self.timeout_s:g} s"
            except httpx.HTTPError as e:
                why = type(e).__name__
            except (httpx.InvalidURL, ValueError) as e:  # never the URL itself: its path may hold a token
                why, retry = f"invalid URL ({type(e).__name__})", False
                break
        self.failed += 1
        raise AlertDeliveryError(f"webhook {_safe_url(self.url)}: alert {alert.dedupe_key} ({alert.rule}) not delivered "
                                 f"after {attempt + 1} attempt(s): {why}", retry=retry)

    def _post(self, body: dict[str, Any]) -> int:
        """POST ``body``; the receiver's status. httpx's timeouts bound each read, so a receiver sending its
        answer a byte at a time held the monitor loop for as long as it liked, and nothing bounds a name
        lookup: the attempt runs in a thread that is given ``timeout_s``. Then its socket is shut down (which
        wakes a blocked read); a thread still resolving the host is left behind, and it cannot post late,
        since a connection made after the deadline is shut as it opens."""
        socks: list[socket.socket] = []
        overdue = threading.Event()

        def shut(sock: socket.socket) -> None:
            with contextlib.suppress(OSError):  # below TLS: an SSL socket's own shutdown would try to talk
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

        def trace(event: str, info: dict[str, Any]) -> None:
            # the TCP socket, then (https) the TLS socket that replaces it
            if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
                sock = info["return_value"].get_extra_info("socket")
                if sock is not None:
                    socks.append(sock)
                    if overdue.is_set():  # connected only after the deadline
                        shut(sock)
            elif event == "http11.send_request_headers.started" and overdue.is_set():
                raise _Overdue()  # past the deadline, nothing is sent: a post given up on never arrives late

        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = {"content-type": "application/json"}
        if self._secret is not None:  # signed per attempt: a retry carries a fresh timestamp
            headers.update(sign_webhook(self._secret, raw))
        outcome: dict[str, Any] = {}

        def attempt() -> None:
            try:  # the status is all it needs: the body goes unread
                with self.client.stream("POST", self.url, content=raw, headers=headers, extensions={"trace": trace}) as r:
                    outcome["status"] = r.status_code
            except Exception as e:  # handed to the caller's thread
                outcome["error"] = e
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            if self._running >= MAX_HANGING_ATTEMPTS:  # each one left behind is a thread, stuck in a lookup
                raise _Overdue()
            self._running += 1
        worker = threading.Thread(target=attempt, name="charter-webhook", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            overdue.set()
            for sock in list(socks):
                shut(sock)
            worker.join(_WAKE_S)
            if worker.is_alive():  # resolving the host, or connecting: left to end on its own
                raise _Overdue()
        if "status" in outcome:  # once answered, the answer stands: a retry would post it twice
            return int(outcome["status"])
        err = outcome.get("error")
        if isinstance(err, httpx.HTTPError) and overdue.is_set():
            raise _Overdue() from None
        if err is not None:
            raise err
        raise _Overdue()  # (the worker ended without either: cannot happen)

    def close(self) -> None:
        self.client.close()


def sign_webhook(secret: bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The headers that sign a webhook post: the time it was sent (Unix seconds) and
    ``sha256=`` + hex HMAC-SHA256 of ``b"<timestamp>." + body`` under the shared secret."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    mac = hmac.new(secret, ts.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: f"sha256={mac}"}


def verify_webhook(secret: str | bytes, body: bytes, timestamp: str | None, signature: str | None, *,
                   tolerance_s: float = SIGNATURE_TOLERANCE_S, now: float | None = None) -> bool:
    """For a receiver: whether a post carries Charter's signature of exactly ``body`` (the raw bytes, before
    any JSON parsing), sent within ``tolerance_s`` of ``now`` (an old post replayed is refused)."""
    if not timestamp or not signature or not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return False
    now = time.time() if now is None else now
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    want = sign_webhook(key, body, int(timestamp))[SIGNATURE_HEADER]
    return hmac.compare_digest(want.encode("ascii"), signature.strip().encode("ascii", "replace"))


class _Overdue(Exception):
    """A webhook attempt ran past its deadline."""


class UnavailableSink:
    """Stands in for a sink that could not be built: each emit fails with the reason, which the
    engine logs once per evaluation while the other sinks still get every alert."""

    def __init__(self, name: str, reason: str) -> None:
        self.name, self.reason = name, reason

    def emit(self, alert: Alert) -> None:
        raise AlertDeliveryError(self.reason, retry=False)  # it stays unbuilt until a restart

    def close(self) -> None:
        return None


def webhook_problems(s: WebhookSinkSettings) -> list[tuple[tuple[str, ...], str]]:
    """(field, message) for each environment variable the webhook sink reads that is not set."""
    out: list[tuple[tuple[str, ...], str]] = []
    if s.url_env:
        url = _env(s.url_env)
        if not url:
            out.append((("url_env",), f"webhook sink: environment variable {s.url_env} is not set"))
        elif not valid_http_url(url):  # the value is a secret: never echoed
            out.append((("url_env",), f"webhook sink: environment variable {s.url_env} does not hold an http:// or "
                                      "https:// URL (with a valid host and port, no spaces or control characters)"))
    if s.secret_env:
        secret = _env(s.secret_env)
        if not secret:
            out.append((("secret_env",), f"webhook sink: environment variable {s.secret_env} is not set"))
        elif len(secret) < MIN_SECRET_CHARS:  # its value is a secret: only its length is told
            out.append((("secret_env",), f"webhook sink: the secret in {s.secret_env} is shorter than "
                                         f"{MIN_SECRET_CHARS} characters"))
    for header, env in s.headers_env.items():
        v = _env(env)
        if not v:
            out.append((("headers_env", header), f"webhook sink: environment variable {env} "
                                                 f"(header {header}) is not set"))
        elif not (v.isascii() and v.isprintable()):
            out.append((("headers_env", header), f"webhook sink: environment variable {env} (header {header}) "
                                                 "holds a control or non-ASCII character"))
    return out


def _env(name: str) -> str:
    """An environment variable's value without the newline a secrets file leaves at its end."""
    return os.environ.get(name, "").strip()


def sink_problems(settings: list[Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """(location in the sinks list, message) for each sink that cannot be built in this environment."""
    return [((i, *loc), msg) for i, s in enumerate(settings) if isinstance(s, WebhookSinkSettings)
            for loc, msg in webhook_problems(s)]


def build_sinks(settings: list[Any]) -> list[AlertSink]:
    """The notifying sinks (log, webhook) for ``settings``; the store sink is the engine's own.

    A sink that cannot be built (:func:`sink_problems`; ``charter serve`` refuses to start on
    those) becomes an :class:`UnavailableSink`, so it never stops the other sinks or the rules.
    """
    out: list[AlertSink] = []
    for i, s in enumerate(settings):
        if isinstance(s, LogSinkSettings):
            out.append(LogSink(s.level))
        elif isinstance(s, WebhookSinkSettings):
            try:
                hook = WebhookSink.from_settings(s)
                hook.name = f"sinks[{i}] (webhook)"  # two webhooks stay apart in logs and metrics
                out.append(hook)
            except Exception as e:
                log.error("monitor.sinks[%d] (webhook) disabled: %s", i, e)
                out.append(UnavailableSink(f"sinks[{i}] (webhook)", f"monitor.sinks[{i}]: {e}"))
    return out


def sink_name(sink: AlertSink) -> str:
    return str(getattr(sink, "name", type(sink).__name__))
