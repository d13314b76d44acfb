"""A client that sends its request body a byte at a time, over a raw socket (httpx sends a body whole).

Shared by the proxy's and the dashboard's tests of read deadlines.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit


def trickle(url: str, body: bytes, gap: float, stop_after: float, path: str = "/v1/chat/completions",
            content_type: str = "application/json", headers: dict[str, str] | None = None) -> bytes:
    """POST ``body`` to ``url`` + ``path`` a byte every ``gap`` seconds (each well inside any per-read timeout);
    return whatever the server answers, or b"" if it has not answered after ``stop_after`` seconds."""
    u = urlsplit(url)
    s = socket.create_connection((u.hostname, u.port), timeout=stop_after)
    got = bytearray()
    done = threading.Event()

    def read() -> None:
        try:
            while chunk := s.recv(65536):
                got.extend(chunk)
        except OSError:
            pass
        done.set()

    head = (f"POST {u.path.rstrip('/')}{path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nContent-Type: {content_type}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
            + f"Content-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for b in body:
            if done.wait(gap):
                break
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
        done.wait(stop_after)
    finally:
        s.close()
    return bytes(got)
