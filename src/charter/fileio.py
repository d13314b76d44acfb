"""File hashing, and crash-safe writes: a new file is written and synced beside its destination,
then renamed onto it."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def synced_part(path: Path, blob: bytes) -> Path:
    """``blob`` written and synced to a temporary file beside ``path``, for :func:`os.replace` onto it
    (a crash meanwhile leaves ``path`` as it was). The file gets an ordinary new file's mode."""
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def sync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (best effort where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
