"""File hashing, and crash-safe writes: a new file is written and synced beside its destination,
then renamed onto it."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from charter.errors import CharterError


def sha256_file(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: set when SIGTERM stopped a command (charter.cli.interruptible): its KeyboardInterrupt can land in a
#: finalizer, where Python ignores it, and the run would go on to rename a file it should have dropped
INTERRUPTED = threading.Event()


def part_path(path: Path) -> Path:
    """Where ``path`` is written until it is complete."""
    return path.with_name(path.name + ".part")


@contextmanager
def written_whole(path: Path | None) -> Iterator[TextIO]:
    """A text stream to ``path`` (standard output when None) that lands whole or not at all: written to
    :func:`part_path`, synced and renamed onto ``path`` when the block ends, removed when it raises (an
    interrupted run leaves no half-written file that looks finished). A file that cannot be written is a
    :class:`CharterError` naming it."""
    if path is None:
        yield sys.stdout
        return
    part = part_path(path)
    try:
        f = open(part, "w", encoding="utf-8")
    except OSError as e:
        raise CharterError(f"{path}: cannot write: {e.strerror}") from None
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if INTERRUPTED.is_set():
        part.unlink(missing_ok=True)
        raise KeyboardInterrupt
    try:
        os.replace(part, path)
    except OSError as e:
        part.unlink(missing_ok=True)
        raise CharterError(f"{path}: cannot write: {e.strerror}") from None


def synced_part(path: Path, blob: bytes) -> Path:
    """``blob`` written and synced to a temporary file beside ``path``, for :func:`os.replace` onto it
    (a crash meanwhile leaves ``path`` as it was). The file gets an ordinary new file's mode."""
    tmp = part_path(path)
    try:
        with tmp.open("wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def replace_files(out: Path, blobs: dict[str, bytes], *, stale_first: Sequence[str] = ()) -> None:
    """Write each blob to its name in ``out``: every one synced beside its destination first (all
    removed again if one fails), then each renamed onto it in ``blobs``' order, so put the file that
    describes the others (a manifest) last. A crash while writing leaves the old files whole.
    ``stale_first`` names old files removed before any rename, so that a crash between renames never
    leaves one of them describing new neighbours."""
    out.mkdir(parents=True, exist_ok=True)
    parts: list[tuple[Path, Path]] = []
    try:
        for name, blob in blobs.items():
            parts.append((synced_part(out / name, blob), out / name))
    except BaseException:
        for tmp, _ in parts:
            tmp.unlink(missing_ok=True)
        raise
    for name in stale_first:
        (out / name).unlink(missing_ok=True)
    for tmp, dst in parts:
        os.replace(tmp, dst)
    sync_dir(out)


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
