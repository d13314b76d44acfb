"""Model directories: safetensors weights plus a JSON manifest that pins every file by sha256.

Loading never unpickles. A file whose hash differs from the manifest, a missing file, or a
manifest of an unknown format is refused with an :class:`ArtifactError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load, save

from charter.errors import ArtifactError
from charter.fileio import replace_files, sha256_file
from charter.yamlsource import read_json

MANIFEST = "manifest.json"
#: a manifest larger than this is refused unread (the packaged guard's is about 20 KB)
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
FORMAT = "charter-model/1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def save_model_dir(out: Path, arrays: dict[str, dict[str, np.ndarray]], manifest: dict[str, Any],
                   texts: dict[str, str] | None = None) -> Path:
    """Write ``{name}.safetensors`` for each array group, each of ``texts`` (name -> content, e.g.
    the model card) and a manifest with their hashes (and those of ``manifest["extra_files"]``,
    files already in ``out``).

    Rewriting a model in place (``charter calibrate``, a retrain) is crash-safe while it writes:
    every file is written and synced beside its destination, and only then renamed onto it, the
    manifest last. A crash while writing leaves the old model whole; one within the renames (a few
    microseconds) leaves files the manifest does not match, which loading refuses. Every file gets
    the mode an ordinary new file gets (0666 less the umask), weights included.
    """
    blobs = {f"{name}.safetensors": save({k: np.ascontiguousarray(v) for k, v in group.items()})
             for name, group in arrays.items()}
    blobs.update({fn: text.encode() for fn, text in (texts or {}).items()})
    files = {fn: hashlib.sha256(blob).hexdigest() for fn, blob in blobs.items()}
    for extra in manifest.pop("extra_files", []):  # e.g. the model card
        files[extra] = sha256_file(out / extra)
    doc = {"format": FORMAT, **manifest, "files": files}
    blobs[MANIFEST] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()  # renamed last
    replace_files(out, blobs)
    return out


def check_model_out(out: Path, option: str = "--out") -> None:
    """Refuse, before any work, a destination that is a file, or a directory holding files but no
    Charter model: writing a model there would scatter its files among someone else's. An empty
    directory, a new path and an existing model directory (rewritten in place) are fine."""
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{option} {out}: exists and is not a directory ({option} names the model directory to write)")
    if not out.is_dir() or not any(p for p in out.iterdir() if not p.name.endswith(".part")):  # .part: a write cut short
        return
    try:
        read_manifest(out)  # a dataset directory has a manifest.json too, of another format
    except ArtifactError:
        raise ArtifactError(f"{option} {out}: holds files but no Charter model; choose a new or empty directory, "
                            "or a model directory to rewrite") from None


def read_manifest(path: Path) -> dict[str, Any]:
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: not a Charter model directory (no {MANIFEST})")
    doc = read_json(mf, MAX_MANIFEST_BYTES, ArtifactError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ArtifactError(f"{mf}: unknown format {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r}")
    if not isinstance(doc.get("files"), dict):
        raise ArtifactError(f"{mf}: manifest lists no files")
    return doc


def load_model_dir(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Verify every file against the manifest, then load the safetensors groups."""
    doc = read_manifest(path)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for fn, want in doc["files"].items():
        p = path / fn
        if Path(fn).name != fn or fn in (".", ".."):
            raise ArtifactError(f"{path / MANIFEST}: file name {fn!r} is not a plain name")
        if not isinstance(want, str) or not _SHA256.fullmatch(want):
            raise ArtifactError(f"{path / MANIFEST}: the hash of {fn!r} is not a sha256 hex digest")
        if not p.is_file():
            raise ArtifactError(f"{p}: listed in the manifest but missing")
        # weights are hashed and parsed from one read: a file renamed in between (a retrain in place) cannot load unchecked
        blob = p.read_bytes() if fn.endswith(".safetensors") else None
        got = sha256_file(p) if blob is None else hashlib.sha256(blob).hexdigest()
        if got != want:
            raise ArtifactError(f"{p}: sha256 {got[:16]}… does not match the manifest ({want[:16]}…); the file was modified")
        if blob is not None:
            try:
                arrays[fn.removesuffix(".safetensors")] = load(blob)
            except Exception as e:  # safetensors raises its own error types
                raise ArtifactError(f"{p}: unreadable safetensors ({e})") from None
            for k, v in arrays[fn.removesuffix(".safetensors")].items():
                # a NaN score compares as "not flagged": a weight that is not finite would fail open
                if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
                    raise ArtifactError(f"{p}: tensor {k!r} holds NaN or infinite values")
    return doc, arrays
