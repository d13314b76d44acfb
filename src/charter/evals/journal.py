"""An append-only journal of an evaluation's finished items, so that a run killed part-way resumes.

The first line names the run (the settings that decide what each item is and asks); every later
line is one finished item and the time it finished, written and fsynced as it finishes. Resuming reads the journal back and
runs only what is missing; items that hit an endpoint error are run again, since the endpoint may
be back. Resuming is asked for, never assumed: the model behind an endpoint may have changed since,
and a run that silently reused old replies would report on a model that is no longer there. A
journal of another run is refused when resuming, naming the settings that differ.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from charter import __version__
from charter.errors import CharterError

VERSION = 1


def has_error(rec: Any) -> bool:
    """Whether an item's record holds a failed call anywhere (an ``error`` that is set, at any depth)."""
    if isinstance(rec, dict):
        return bool(rec.get("error")) or any(has_error(v) for v in rec.values())
    if isinstance(rec, list):
        return any(has_error(v) for v in rec)
    return False


def _has_items(path: Path) -> bool:
    """Whether the journal at ``path`` holds an item after its head. One without (a run that stopped before
    its first item) is not kept as ``.previous``: it would replace the one kept there, with hours of work."""
    try:
        with open(path, "rb") as f:
            f.readline()
            return bool(f.readline().strip())
    except FileNotFoundError:
        return False


class RunJournal:
    """``done`` maps an item's key to its record, from an earlier run of the same ``run`` when resuming
    (otherwise the journal starts afresh)."""

    def __init__(self, path: Path, run: dict[str, Any], *, resume: bool = False) -> None:
        self.path, self.run = path, run
        lines = self._lines() if resume else []
        #: when the oldest item kept from the journal finished (ISO 8601, UTC), else now: a resumed run's
        #: results are as old as their oldest answer, not as new as the resume (None: a record has no time)
        self.started_at: str | None = datetime.now(timezone.utc).isoformat()
        self.done = self._done(lines)
        #: where a journal that a run without --resume starts over from was moved (hours of paid work
        #: were truncated by a forgotten --resume)
        self.previous: Path | None = None
        try:
            if not resume and _has_items(path):
                self.previous = path.with_name(path.name + ".previous")
                os.replace(path, self.previous)
            self._f = open(path, "a" if lines else "w", encoding="utf-8")
            if not lines:
                self._write(self._head())
        except OSError as e:
            raise CharterError(f"{path}: cannot write the run journal ({e.strerror or e})") from None

    def _lines(self) -> list[Any]:
        """The journal's lines, parsed; a last line cut short by a kill is cut from the file first."""
        try:
            with open(self.path, "rb+") as f:
                raw = f.read()
                if raw and not raw.endswith(b"\n"):
                    raw = raw[: raw.rfind(b"\n") + 1]
                    f.truncate(len(raw))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise CharterError(f"{self.path}: cannot read the run journal ({e}); run without --resume to start over") from None
        out = []
        # split on newlines only, and decode line by line: records keep U+2028 and non-ASCII unescaped
        for line in raw.split(b"\n")[:-1]:
            try:
                out.append(json.loads(line.decode("utf-8")))
            except (ValueError, RecursionError):  # undecodable, not JSON, a huge integer, nested too deeply
                continue
        return out

    def _done(self, lines: list[Any]) -> dict[str, Any]:
        if not lines:
            return {}
        head = lines[0]
        if head != self._head():
            theirs = head.get("run") if isinstance(head, dict) and isinstance(head.get("run"), dict) else {}
            diff = sorted(k for k in set(self.run) | set(theirs) if theirs.get(k) != self.run.get(k))
            if not diff and isinstance(head, dict) and head.get("charter") != __version__:
                diff = [f"Charter version: {str(head.get('charter'))[:40]} then, {__version__} now"]
            raise CharterError(f"{self.path}: a journal of another run ({', '.join(diff) or 'format'} differ); "
                               "run without --resume to start over, or choose another --out")
        done: dict[str, Any] = {}
        ats: dict[str, Any] = {}
        for x in lines[1:]:
            # a record must be a non-empty object (a hand-edited or foreign line is asked again, not summarised)
            if (isinstance(x, dict) and isinstance(x.get("key"), str) and isinstance(x.get("record"), dict)
                    and x["record"] and not has_error(x["record"])):
                done[x["key"]], ats[x["key"]] = x["record"], x.get("at")
        if ats:
            self.started_at = min(ats.values()) if all(isinstance(a, str) for a in ats.values()) else None
        return done

    def _head(self) -> dict[str, Any]:
        # another Charter may build or grade items differently: its records are not this run's
        return {"journal": VERSION, "charter": __version__, "run": self.run}

    def _write(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def add(self, key: str, record: Any) -> None:
        try:
            self._write({"key": key, "record": record, "at": datetime.now(timezone.utc).isoformat()})
        except (OSError, ValueError) as e:  # ValueError: the file is closed
            raise CharterError(f"{self.path}: cannot append to the run journal ({e})") from None

    def close(self) -> None:
        self._f.close()
