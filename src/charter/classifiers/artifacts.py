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
from safetensors.numpy import load_file, save

from charter.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = "charter-model/1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_model_dir(out: Path, arrays: dict[str, dict[str, np.ndarray]], manifest: dict[str, Any]) -> Path:
    """Write ``{name}.safetensors`` for each array group and a manifest with their hashes.

    Every file gets the mode an ordinary new file gets (0666 less the umask), weights included.
    """
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name, group in arrays.items():
        fn = f"{name}.safetensors"
        blob = save({k: np.ascontiguousarray(v) for k, v in group.items()})
        # written like the manifest (mode 0666 & ~umask; safetensors' save_file makes 0600 files); the old
        # file is removed first so that rewriting a model in place does not keep an older file's mode
        (out / fn).unlink(missing_ok=True)
        (out / fn).write_bytes(blob)
        files[fn] = sha256_file(out / fn)
    for extra in manifest.pop("extra_files", []):  # e.g. the model card
        files[extra] = sha256_file(out / extra)
    doc = {"format": FORMAT, **manifest, "files": files}
    (out / MANIFEST).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return out


def read_manifest(path: Path) -> dict[str, Any]:
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: not a Charter model directory (no {MANIFEST})")
    try:
        doc = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from None
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
        got = sha256_file(p)
        if got != want:
            raise ArtifactError(f"{p}: sha256 {got[:16]}… does not match the manifest ({want[:16]}…); the file was modified")
        if fn.endswith(".safetensors"):
            try:
                arrays[fn.removesuffix(".safetensors")] = load_file(str(p))
            except Exception as e:  # safetensors raises its own error types
                raise ArtifactError(f"{p}: unreadable safetensors ({e})") from None
    return doc, arrays
