"""Calls to OpenAI-compatible endpoints: one retry policy for every client Charter has.

The data generator, red-team targets, attackers and judges, evaluation targets and judges and
the cluster summariser all retry the same failures the same way: HTTP 408/409/425/429 and 5xx,
timeouts and transport errors, with exponential backoff and jitter, honouring ``Retry-After``.
They read a reply the same way too (:func:`completion_text`); each keeps its own error reporting.
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

RETRYABLE = frozenset({408, 409, 425, 429})
#: the most of a reply any client reads (decoded): a runaway or hostile endpoint cannot fill memory
MAX_REPLY_BYTES = 8 * 1024 * 1024
#: the longest base URL an endpoint option takes
MAX_BASE_URL = 2048


class ReplyTooLarge(ValueError):
    """An endpoint's reply was longer than :data:`MAX_REPLY_BYTES`."""


def _whole(r: httpx.Response, data: bytes) -> httpx.Response:
    # the bytes are already decoded: drop the headers that would make httpx decode them again
    drop = {"content-encoding", "content-length", "transfer-encoding"}
    return httpx.Response(r.status_code, headers=[(k, v) for k, v in r.headers.multi_items() if k.lower() not in drop],
                          content=data, request=r.request)


def _too_long(r: httpx.Response, cap: int) -> bool:
    n = r.headers.get("content-length", "")
    return n.isdigit() and int(n) > cap


def _past(r: httpx.Response, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise httpx.ReadTimeout("the reply did not finish before the attempt's deadline", request=r.request)


def attempt_deadline(timeout: httpx.Timeout) -> float | None:
    """When an attempt begun now must have read its whole reply: twice the read timeout from now.

    httpx's read timeout bounds each wait for bytes, so a server sending a byte every few seconds
    would hold a caller for as long as it liked. A reply still arriving past this deadline is a
    timeout (checked as each chunk arrives, so an attempt ends at most one read timeout after it)."""
    return None if timeout.read is None else time.monotonic() + 2 * timeout.read


def read_capped(r: httpx.Response, cap: int = MAX_REPLY_BYTES, deadline: float | None = None) -> httpx.Response:
    """A reply opened with ``client.stream(...)``, read into an ordinary response if it holds at most
    ``cap`` bytes; else :class:`ReplyTooLarge`, having read no more than ``cap`` of it. A reply still
    arriving after ``deadline`` (a :func:`time.monotonic` value) raises ``httpx.ReadTimeout``."""
    if _too_long(r, cap):
        raise ReplyTooLarge(f"reply of {r.headers['content-length']} bytes, over the {cap} read")
    _past(r, deadline)
    data = bytearray()
    for chunk in r.iter_bytes():
        data += chunk
        if len(data) > cap:
            raise ReplyTooLarge(f"reply over the {cap} bytes read")
        _past(r, deadline)
    return _whole(r, bytes(data))


async def aread_capped(r: httpx.Response, cap: int = MAX_REPLY_BYTES, deadline: float | None = None) -> httpx.Response:
    """:func:`read_capped` for an ``httpx.AsyncClient`` stream."""
    if _too_long(r, cap):
        raise ReplyTooLarge(f"reply of {r.headers['content-length']} bytes, over the {cap} read")
    _past(r, deadline)
    data = bytearray()
    async for chunk in r.aiter_bytes():
        data += chunk
        if len(data) > cap:
            raise ReplyTooLarge(f"reply over the {cap} bytes read")
        _past(r, deadline)
    return _whole(r, bytes(data))


def redact_url(url: str) -> str:
    """``url`` with any user:password@ part masked, for names, messages, logs and manifests.

    Everything before the last ``@`` after the scheme is masked, so a password holding ``/``, ``?``,
    ``#`` or ``@`` (which database drivers accept unencoded) cannot end the host part early and show.
    """
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL at all, but may still carry user:password@
        return "***@" + url.rsplit("@", 1)[1]
    return f"{scheme}://***@" + rest.rsplit("@", 1)[1]


def shown_url(url: str) -> str:
    """``url`` as an error message may show it: no user:password@ part, and no query or fragment (a query
    often carries a key)."""
    return redact_url(url).split("?", 1)[0].split("#", 1)[0]  # credentials first: a password may hold "?" or "#"


def valid_http_url(url: str) -> bool:
    """An http(s) URL with a host and a valid port, and no spaces or control characters (httpx raises a raw
    InvalidURL, or OverflowError, on others, and a space pasted into a secret is not part of it)."""
    if not url.startswith(("http://", "https://")) or " " in url or not url.isprintable():
        return False
    try:
        u = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        return False
    return bool(u.host) and (u.port is None or 0 < u.port < 65536)


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an OpenAI-compatible base URL, or None: the one rule of the proxy's upstream, the
    data generator, the red team's target, attacker and judge, and the evaluations' endpoints. API paths are
    appended to it (``/chat/completions``), so a query or fragment would swallow them. The message never
    holds the URL (it may hold a password or a key)."""
    if len(url) > MAX_BASE_URL:
        return f"must be at most {MAX_BASE_URL} characters"
    try:
        u = urlsplit(url)
        u.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return "must be an http:// or https:// URL (it does not parse)"
    if u.scheme not in ("http", "https") or not url.startswith(("http://", "https://")):
        return "must be an http:// or https:// URL"
    if not u.hostname or not valid_http_url(url):  # (spaces and control characters included)
        return "must be an http:// or https:// URL with a host and no spaces"
    if u.query or u.fragment or "?" in url or "#" in url:
        return "must have no query string or fragment: the API paths are appended to it (e.g. http://127.0.0.1:11434/v1)"
    return None


def retryable(status: int) -> bool:
    return status in RETRYABLE or status >= 500


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - time.time())


@dataclass
class Backoff:
    """Exponential backoff with jitter, capped; a server's Retry-After wins (up to the cap). Thread-safe."""

    base: float = 0.5
    cap: float = 20.0
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cap)
        with self._lock:
            jitter = self._rng.uniform(0, self.base)
        return min(self.cap, self.base * 2**attempt) + jitter


@dataclass
class Posted:
    """The outcome of :func:`post_json`: the last response (if any) and, unless it is a 200, why it failed."""

    response: httpx.Response | None
    error: str | None
    attempts: int
    #: no attempt reached the server (nothing listens there, or the host does not resolve)
    connect_only: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.response is not None


def post_json(client: httpx.Client, url: str, body: dict[str, Any], *, retries: int = 3,
              backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep,
              max_bytes: int = MAX_REPLY_BYTES) -> Posted:
    """POST ``body`` to ``url``, retrying what :func:`retryable` allows up to ``retries`` times; a
    reply over ``max_bytes`` is an error, read no further; one still arriving past
    :func:`attempt_deadline` is a timeout."""
    backoff = backoff or Backoff()
    last, connect_only = "", True
    for attempt in range(retries + 1):
        retry_after = None
        try:
            deadline = attempt_deadline(client.timeout)
            with client.stream("POST", url, json=body) as raw:
                r = read_capped(raw, max_bytes, deadline)
        except ReplyTooLarge as e:  # not transient: asking again brings the same flood
            return Posted(None, str(e), attempt + 1)
        except httpx.TimeoutException:
            last, connect_only = "timeout", False
        except httpx.ConnectError:
            last = "connection failed"
        except httpx.TransportError as e:
            last, connect_only = f"transport: {type(e).__name__}", False
        except httpx.RequestError as e:  # an undecodable body, a redirect loop: not transient
            return Posted(None, f"request: {type(e).__name__}", attempt + 1)
        else:
            if r.status_code == 200:
                return Posted(r, None, attempt + 1)
            last = f"HTTP {r.status_code}"
            if not retryable(r.status_code) or attempt == retries:
                return Posted(r, last, attempt + 1)
            connect_only = False
            retry_after = retry_after_seconds(r.headers.get("retry-after"))
        if attempt < retries:
            sleep(backoff.wait(attempt, retry_after))
    return Posted(None, last, retries + 1, connect_only)


def bearer(key: str | None, where: str) -> dict[str, str]:
    """The Authorization header for ``key`` (none without one). A pasted trailing newline is stripped; a
    space, control or non-ASCII character (httpx fails on it with a raw UnicodeEncodeError) is a
    CharterError naming ``where`` the key came from, never the key."""
    from charter.errors import CharterError

    key = key.strip() if key else key
    if not key:
        return {}
    if not (key.isascii() and key.isprintable() and " " not in key):
        raise CharterError(f"the API key {where} holds a space, a control or a non-ASCII character")
    return {"Authorization": f"Bearer {key}"}


class Endpoint:
    """One OpenAI-compatible URL Charter talks to (red-team target, judge, attacker; evaluated model): its client, with the
    key from ``api_key`` or ``$key_env`` as a bearer token (never logged or stored), its retries, and
    the rule that a URL that has never answered stops the run with a clear error (a wrong host or
    port would otherwise make every attempt of a long run an error)."""

    def __init__(self, url: str, what: str, *, key_env: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url, self.what, self.retries, self._sleep = url, what, retries, sleep
        self.backoff = backoff or Backoff()
        key = api_key if api_key is not None else os.environ.get(key_env)
        self.client = httpx.Client(timeout=timeout, headers=bearer(key, f"for {what} (${key_env})"))
        self.reached = False  # some request got an HTTP response

    def post(self, body: dict[str, Any]) -> Posted:
        from charter.errors import CharterError

        p = post_json(self.client, self.url, body, retries=self.retries, backoff=self.backoff, sleep=self._sleep)
        if p.connect_only and not self.reached:
            raise CharterError(f"cannot connect to {self.what} {redact_url(self.url)} (after {p.attempts} attempts)")
        self.reached = True
        return p

    def close(self) -> None:
        self.client.close()


class MalformedCompletion(ValueError):
    """A 200 reply that is not an OpenAI chat completion."""


@dataclass(frozen=True)
class ChatChoice:
    """The first choice of a chat completion: its text, why it ended, and the whole body."""

    text: str
    finish_reason: str | None
    body: dict[str, Any]


def completion(response: httpx.Response) -> ChatChoice:
    """Read ``choices[0]`` of a chat completion. A null content (a tool call, a refusal field) reads
    as empty text; a body that is not JSON, has no choice or whose content is not a string raises
    :class:`MalformedCompletion`."""
    try:
        body = response.json()
        choice = body["choices"][0]
        content = choice["message"].get("content")
        finish = choice.get("finish_reason")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):  # RecursionError: nested too deeply
        raise MalformedCompletion("not an OpenAI chat completion") from None
    if content is not None and not isinstance(content, str):
        raise MalformedCompletion("message content is not a string")
    return ChatChoice(content or "", finish if isinstance(finish, str) else None, body)


def completion_text(response: httpx.Response) -> str:
    return completion(response).text
