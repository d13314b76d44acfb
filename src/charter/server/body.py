"""Reading a request body with a bound on its size and on the time it takes to arrive.

httpx-style per-read timeouts do not bound a client that sends a byte at a time: it holds a connection
and a task for as long as it likes. The proxy and the dashboard read bodies through this one function.
"""

from __future__ import annotations

import anyio
from starlette.requests import Request


class BodyTooLarge(Exception):
    """The body (or its Content-Length) is over the limit."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body of ``request``, at most ``limit`` bytes: a larger Content-Length is refused before reading,
    and the bytes are counted as they arrive (:class:`BodyTooLarge`). ``TimeoutError`` when it is not whole
    within ``timeout_s``."""
    cl = request.headers.get("content-length")
    if cl is not None and cl.isdigit() and int(cl) > limit:
        raise BodyTooLarge()
    chunks, n = [], 0
    with anyio.fail_after(timeout_s):
        async for c in request.stream():
            n += len(c)
            if n > limit:
                raise BodyTooLarge()
            chunks.append(c)
    return b"".join(chunks)
