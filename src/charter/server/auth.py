"""Client keys (stored as sha256) and a per-key token-bucket rate limit."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from charter.server.config import ClientKey, Rate, hash_key


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
    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, p: Principal) -> float:
        b = self._buckets.get(p.key_id)
        if b is None:
            b = self._buckets[p.key_id] = TokenBucket(p.rate.per_second, p.rate.burst)
        return b.take()
