"""Crash-safe file writes: a new file is written and synced beside its destination, then renamed onto it."""

from __future__ import annotations

import os
from pathlib import Path


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
