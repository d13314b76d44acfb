"""Generate, check, deduplicate and write a dataset with its manifest."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import charter
from charter.constitution.model import Constitution
from charter.data.base import Generator
from charter.data.hygiene import clean
from charter.data.records import Record
from charter.data.splits import split_of, sub_seed
from charter.errors import CharterError, GeneratorError, UsageError
from charter.fileio import replace_files
from charter.transforms.base import TRANSFORMS

DATA_FILE = "data.jsonl"
MANIFEST_FILE = "manifest.json"


def _family_of(generator: Generator | None = None) -> dict[str, str]:
    try:
        fam = {name: cls.family for name, cls in TRANSFORMS}
    except ImportError:  # the built-in library is not installed
        fam = {}
    return {**fam, **(generator.transform_families() if generator else {})}


def code_version() -> str:
    """sha256 over the source of the charter.data package, so a manifest pins the generator code."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


@dataclass
class Dataset:
    records: list[Record]
    dropped: dict[str, int] = field(default_factory=dict)
    generated: int = 0


def build_dataset(
    constitution: Constitution,
    generator: Generator,
    n: int,
    seed: int,
    holdout: frozenset[str] = frozenset(),
    near_threshold: float = 0.85,
    progress: Callable[[int], None] | None = None,
    families: dict[str, str] | None = None,
    overgenerate: float = 1.2,
) -> Dataset:
    fam = families if families is not None else _family_of(generator)
    # Deduplication removes some records, so generate more than n and trim to exactly n;
    # if a run still falls short (a small constitution), retry with a larger target.
    factor = overgenerate
    for _attempt in range(3):
        generator.stats.clear()  # the manifest reports the run that made the data, not every retry summed
        raw: list[Record] = []
        bad_split = bad_holdout = 0
        for r in generator.generate(constitution, int(n * factor), seed, holdout):
            if progress:
                progress(1)
            if r.split != split_of(r.seed_id):
                bad_split += 1
                continue
            if r.split != "test" and any(fam.get(t) in holdout for t in r.transforms):
                bad_holdout += 1
                continue
            raw.append(r)
        random.Random(sub_seed(seed, "shuffle")).shuffle(raw)
        kept, counts = clean(raw, threshold=near_threshold)
        if len(kept) >= n or not kept or not generator.regenerate_on_shortfall:
            break
        factor *= min(3.0, 1.05 * n / len(kept))
    trimmed = max(0, len(kept) - n)
    kept = kept[:n]
    dropped = {**counts, "split_mismatch": bad_split, "holdout_violations": bad_holdout, "trimmed_to_n": trimmed}
    return Dataset(kept, dropped, generated=len(raw) + bad_split + bad_holdout)


def _balance(records: Iterable[Record]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    groups: dict[str, Counter[str]] = {}
    for r in records:
        for g in ("all", f"kind:{r.kind}", f"split:{r.split}"):
            groups.setdefault(g, Counter())[r.label] += 1
    for g, c in sorted(groups.items()):
        total = sum(c.values())
        out[g] = {"restricted": c["restricted"], "permitted": c["permitted"], "restricted_fraction": round(c["restricted"] / total, 4)}
    return out


def build_manifest(
    ds: Dataset,
    constitution: Constitution,
    constitution_path: Path,
    generator: Generator,
    n: int,
    seed: int,
    holdout: frozenset[str],
    data_sha256: str,
    families: dict[str, str] | None = None,
) -> dict[str, Any]:
    fam = families if families is not None else _family_of(generator)
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("category", "label", "kind", "family", "transform", "split", "format", "lang", "source")}
    for r in ds.records:
        for k in ("category", "label", "kind", "split", "format", "lang", "source"):
            counts[k][getattr(r, k)] += 1
        for f in sorted({fam.get(t, "unknown") for t in r.transforms}) or ["none"]:
            counts["family"][f] += 1
        for t in r.transforms:
            counts["transform"][t] += 1
    return {
        "n_requested": n,
        "n_generated": ds.generated,
        "n_records": len(ds.records),
        "seed": seed,
        "holdout_families": sorted(holdout),
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
        "class_balance": _balance(ds.records),
        "dropped": ds.dropped,
        "generator": {"name": generator.name, "params": generator.params(), "stats": dict(sorted(generator.stats.items()))},
        "constitution": {
            "path": str(constitution_path),
            "sha256": hashlib.sha256(constitution_path.read_bytes()).hexdigest(),
            "fingerprint": constitution.fingerprint(),
            "name": constitution.name,
        },
        "data": {"file": DATA_FILE, "sha256": data_sha256},
        "charter_version": charter.__version__,
        "code_version": code_version(),
    }


def _jsonl(records: Iterable[Record]) -> bytes:
    return "".join(r.model_dump_json(exclude_none=True) + "\n" for r in records).encode()


def write_dataset(ds: Dataset, out_dir: Path) -> str:
    """Write data.jsonl atomically and return its sha256."""
    blob = _jsonl(ds.records)
    replace_files(out_dir, {DATA_FILE: blob})
    return hashlib.sha256(blob).hexdigest()


def check_out_dir(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that is a file, or that already holds a dataset unless ``overwrite``:
    called before anything is generated, since a dataset may have cost hours of paid requests."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CharterError(f"{out_dir}: exists and is not a directory (--out names the dataset directory to write)")
    found = [name for name in (DATA_FILE, MANIFEST_FILE) if (out_dir / name).exists()]
    if MANIFEST_FILE in found:  # a data.jsonl kept beside a model does not make it a dataset
        try:
            head = (out_dir / MANIFEST_FILE).read_bytes()[:4096]
        except OSError:
            head = b""
        if b"charter-model" in head:  # --force would replace a model's manifest with a dataset's
            raise CharterError(f"{out_dir}: holds a Charter model, not a dataset; choose another --out")
    if found and not overwrite:
        raise CharterError(f"{out_dir}: already holds a dataset ({', '.join(found)}); "
                           "pass --force to overwrite it, or choose another --out")


@contextmanager
def writable_dir(path: Path, what: str) -> Iterator[None]:
    """Make sure, before the work of the block, that ``path`` is a directory that can be written (an
    unwritable ``--out`` failed only after minutes of work, or of paid requests); a directory made here
    and left empty by a block that raised is removed again."""
    made = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError as e:
        raise CharterError(f"{what}{path}: cannot write there ({e.strerror or e})") from None
    try:
        yield
    except BaseException:
        if made and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def read_records(path: Path) -> list[Record]:
    with path.open(encoding="utf-8") as f:
        return [Record.model_validate_json(line) for line in f if line.strip()]


def generate_to_dir(
    constitution_path: Path,
    constitution: Constitution,
    generator: Generator,
    out_dir: Path,
    n: int,
    seed: int,
    holdout: frozenset[str] = frozenset(),
    progress: Callable[[int], None] | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Generate a dataset into ``out_dir``; ``overwrite=False`` refuses, first, a directory that holds one."""
    check_out_dir(out_dir, overwrite)
    fam = _family_of(generator)
    unknown = sorted(holdout - set(fam.values())) if fam else []
    if unknown:
        raise UsageError(f"unknown transform families in --holdout-families: {', '.join(unknown)} (known: {', '.join(sorted(set(fam.values())))})")
    ds = build_dataset(constitution, generator, n, seed, holdout, progress=progress, families=fam)
    if not ds.records:
        why = ", ".join(f"{k} {v}" for k, v in sorted(generator.stats.items()) if v) or "nothing was generated"
        raise GeneratorError(f"the {generator.name} generator produced no usable records ({why}); nothing was written to {out_dir}")
    blob = _jsonl(ds.records)
    sha = hashlib.sha256(blob).hexdigest()
    manifest = build_manifest(ds, constitution, constitution_path, generator, n, seed, holdout, sha, families=fam)
    # the old manifest goes before either rename: a crash between them leaves a data.jsonl without
    # a manifest, never a manifest that describes other data
    replace_files(out_dir, {DATA_FILE: blob, MANIFEST_FILE: (json.dumps(manifest, indent=2) + "\n").encode()},
                  stale_first=[MANIFEST_FILE])
    return manifest
