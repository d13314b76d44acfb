"""Client keys (stored as sha256) and a per-key token-bucket rate limit, per replica or shared."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from charter.server.config import ClientKey, Rate, hash_key

if TYPE_CHECKING:
    from charter.monitor.store import EventStore

log = logging.getLogger("charter.server")
#: a worker stuck connecting to a store that stopped answering gives up after this long
CONNECT_TIMEOUT_S = 5


@dataclass
class Principal:
    #: the key's configured id ("anonymous" without keys)
    name: str
    #: a short prefix of the key's sha256, safe to log
    key_id: str
    rate: Rate


class KeyStore:
    def __init__(self, keys: list[ClientKey], default_rate: Rate, required: bool) -> None:
        self._by_hash = {k.sha256: k for k in keys}
        self.default_rate = default_rate
        self.required = required or bool(keys)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an ``Authorization`` header, or None when a key is required and wrong."""
        if not self.required:
            return Principal("anonymous", "anonymous", self.default_rate)
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hash_key(authorization[7:].strip())
        for h, k in self._by_hash.items():  # constant-time compare of digests
            if hmac.compare_digest(h, digest):
                return Principal(k.id, h[:16], k.rate or self.default_rate)
        return None


class TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self) -> float:
        """0.0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Each key's bucket in this process: with N replicas a key gets N times its rate."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, p: Principal) -> float:
        """0.0 if ``p`` may send a request now, else the seconds until it may."""
        with self._lock:
            b = self._buckets.get(p.key_id)
            if b is None:
                b = self._buckets[p.key_id] = TokenBucket(p.rate.per_second, p.rate.burst)
            return b.take()

    async def take(self, p: Principal) -> float:
        return self.check(p)

    def close(self) -> None:
        pass


class SharedRateLimiter:
    """Each key's bucket in the monitoring store, drawn on by every replica that shares it.

    While the store cannot be reached, or does not answer within ``timeout_s``, each replica counts
    on its own buckets (the limit degrades to per-replica, never to none) and tries the store again
    ``retry_s`` later; ``on_error`` counts those failures. The store call runs in a worker thread,
    off the event loop, and a call that hangs (a host that stopped answering) is not waited for."""

    def __init__(self, url: str, *, retry_s: float = 5.0, timeout_s: float = 1.0,
                 on_error: Callable[[], None] | None = None) -> None:
        self.url, self.retry_s, self.timeout_s, self.on_error = url, retry_s, timeout_s, on_error
        self.local = RateLimiter()
        self._store: EventStore | None = None
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _open(self) -> EventStore:
        with self._lock:
            if self._store is None:
                from charter.monitor.store import EventStore

                self._store = EventStore.open(self.url, connect_timeout=CONNECT_TIMEOUT_S)
            return self._store

    def _shared(self, p: Principal) -> float:
        return self._open().take_token(p.key_id, p.rate.per_second, p.rate.burst)

    def _failed(self, why: str) -> None:
        # the type only: a driver's message may carry the database's address
        self._down_until = time.monotonic() + self.retry_s
        log.warning("shared rate limit: store unavailable (%s); counting per replica for %.0f s", why, self.retry_s)
        if self.on_error:
            self.on_error()

    def check(self, p: Principal) -> float:
        """0.0 if ``p`` may send a request now, else the seconds until it may (blocking)."""
        if time.monotonic() >= self._down_until:
            try:
                return self._shared(p)
            except Exception as e:
                self._failed(type(e).__name__)
        return self.local.check(p)

    async def take(self, p: Principal) -> float:
        if time.monotonic() >= self._down_until:
            try:
                return await asyncio.wait_for(asyncio.to_thread(self._shared, p), self.timeout_s)
            except asyncio.TimeoutError:
                self._failed(f"no answer within {self.timeout_s:g} s")
            except Exception as e:
                self._failed(type(e).__name__)
        return self.local.check(p)

    def close(self) -> None:
        if not self._lock.acquire(timeout=1.0):  # a connect still hanging in a worker: leave it to its timeout
            return
        try:
            if self._store is not None:
                self._store.close()
                self._store = None
        finally:
            self._lock.release()
