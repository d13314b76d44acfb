"""Guard decisions as structured events, and the path that carries them off the response path.

The proxy hands each event to :class:`EventQueue.put`, which never blocks: a background task
batches events into a pluggable :class:`EventSink`. When the queue is full (or the sink fails)
events are appended to a spill file and counted, so none is lost silently; once the sink accepts
writes again, the spill file is replayed into it (the SQL store ignores duplicates, so a replay
cut short by a crash can simply run again).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import unicodedata
import uuid
from pathlib import Path
from collections.abc import Callable
from typing import Any, BinaryIO, Literal, Protocol, TypeVar, runtime_checkable

import anyio
from pydantic import BaseModel, Field

T = TypeVar("T")
log = logging.getLogger("charter.monitor")

Decision = Literal["allowed", "flagged", "blocked_input", "blocked_output", "error", "rejected"]


def normalise_user(user: str) -> str:
    """A client's end-user id as one user: compatibility forms folded, case and spacing ignored ("Alice ",
    "ALICE" and "alice" were three users to the per-user rules)."""
    return " ".join(unicodedata.normalize("NFKC", user[:256]).casefold().split())


def user_hash(key_id: str, user: str) -> str:
    """The stored id of end user ``user`` of client key ``key_id`` (``charter monitor purge --user``)."""
    return raw_user_hash(key_id, normalise_user(user))


def raw_user_hash(key_id: str, user: str) -> str:
    """The stored id of ``user`` as given, unnormalised: events stored before user ids were normalised."""
    return "u_" + hashlib.sha256(f"{key_id}\x00{user[:256]}".encode("utf-8", "surrogatepass")).hexdigest()[:20]


class StageVerdict(BaseModel):
    stage: str
    score: float
    flagged: bool
    category: str | None = None
    latency_ms: float = 0.0
    escalated: bool = False
    #: output stage only: the 1-based upstream token at which the stream was flagged
    at_token: int | None = None
    #: the normalisation view that scored worst (e.g. "base64", "leet"): evidence of obfuscation
    view: str | None = None
    #: per-category scores (restricted categories only, rounded), for near-threshold aggregation
    scores: dict[str, float] = Field(default_factory=dict)
    threshold: float | None = None


class Event(BaseModel):
    request_id: str = Field(default_factory=lambda: "req_" + uuid.uuid4().hex[:24])
    conversation_id: str | None = None
    #: the id of the client key (its name in the config, never the key), or "anonymous"
    key_id: str = "anonymous"
    #: a hash of the end user (the request's ``user`` field within the key), else the key id
    user_id: str | None = None
    time: float = Field(default_factory=time.time)
    endpoint: str = "/v1/chat/completions"
    model: str | None = None
    stream: bool = False
    verdicts: list[StageVerdict] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    decision: Decision = "allowed"
    action: str | None = None
    latency_ms: dict[str, float] = Field(default_factory=dict)
    upstream_status: int | None = None
    error: str | None = None
    #: the conversation and response text under the deployment's content policy (see monitor.content)
    content: dict[str, Any] | None = None
    content_policy: str = "none"

    @property
    def subject(self) -> str:
        return self.user_id or self.key_id


@runtime_checkable
class EventSink(Protocol):
    async def write(self, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


class JsonlSink:
    """Appends events to a JSON-lines file (one event a line)."""

    def __init__(self, path: str | Path, policy: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        #: the configured content policy, applied again to what is written (spilled events replayed
        #: after it was tightened)
        self.policy = policy

    def _append(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)

    def _restricted(self, e: Event) -> Event:
        from charter.monitor.store import restricted_content

        content, pol = restricted_content(e, self.policy)  # type: ignore[arg-type]
        return e if content is e.content else e.model_copy(update={"content": content, "content_policy": pol})

    async def write(self, events: list[Event]) -> None:
        lines = "".join(self._restricted(e).model_dump_json() + "\n" for e in events)
        await anyio.to_thread.run_sync(self._append, lines)

    async def close(self) -> None:
        return None


class MemorySink:
    """Keeps events in a list (tests and embedding)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def write(self, events: list[Event]) -> None:
        self.events.extend(events)

    async def close(self) -> None:
        return None


class EventQueue:
    """A bounded queue between the request path and a sink; overflow spills to disk.

    ``put`` is synchronous and O(1) (plus one small file append, not fsynced, when spilling). Spilled events are
    in the sink's JSONL format, ready to be replayed by the monitoring store.
    """

    def __init__(self, sink: EventSink, spill_path: str | Path, *, maxsize: int = 10_000, batch: int = 256,
                 replay: bool = True, replay_interval: float = 5.0) -> None:
        self.sink = sink
        self.spill_path = Path(spill_path)
        self.maxsize = maxsize
        self.batch = batch
        self.replay = replay
        self.replay_interval = replay_interval
        self._q: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None
        #: the batch the worker has taken off the queue and not yet written or spilled
        self._inflight: list[Event] = []
        self._healthy = True
        #: events committed by the sink (from the request path or replayed): the acknowledgement
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.sink_errors = 0

    @property
    def replay_path(self) -> Path:
        return self.spill_path.with_name(self.spill_path.name + ".replaying")

    @property
    def depth(self) -> int:
        return self._q.qsize() if self._q is not None else 0

    async def start(self) -> None:
        self._q = asyncio.Queue(maxsize=self.maxsize)
        self._task = asyncio.create_task(self._run(), name="charter-events")

    def put(self, event: Event) -> None:
        # the overflow is written, not fsynced: put runs on the event loop, and a full queue (a slow or failing
        # sink under load) made every request wait on the disk. The kernel keeps a written line through a crash
        # of the process (kill -9), as it is durable as the queued events beside it; a power loss can take both
        if self._q is None:
            self._spill([event], sync=False)
            return
        try:
            self._q.put_nowait(event)
        except asyncio.QueueFull:
            self._spill([event], sync=False)

    def _spill(self, events: list[Event], sync: bool = True) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("a", encoding="utf-8") as f:
            f.write("".join(e.model_dump_json() + "\n" for e in events))
            f.flush()
            if sync:
                os.fsync(f.fileno())
        self.spilled += len(events)

    def _spill_inflight(self, events: list[Event]) -> None:
        self._spill(events)
        self._inflight = []  # in the thread: a cancel waiting for it must not see the batch as unspilled

    async def _flush(self, events: list[Event]) -> None:
        try:
            await self.sink.write(events)
            self._inflight = []
            self.written += len(events)
            self._healthy = True
        except Exception as e:  # a failing sink must not take the proxy down
            self.sink_errors += 1
            if self._healthy:  # log the first failure in full, then one line per batch
                log.exception("event sink failed; spilling %d events to %s", len(events), self.spill_path)
            else:
                log.warning("event sink still failing (%s); spilled %d events", type(e).__name__, len(events))
            self._healthy = False
            await _finish_in_thread(self._spill_inflight, events)

    def _pending_replay(self) -> bool:
        return self.replay_path.exists() or (self.spill_path.exists() and self.spill_path.stat().st_size > 0)

    async def _replay(self) -> None:
        """Move the spill file aside and write its events to the sink, ``batch`` at a time (a long outage's
        file is never read whole into memory); on failure, leave what did not go in for later."""
        rp = self.replay_path
        if not rp.exists():
            if not (self.spill_path.exists() and self.spill_path.stat().st_size > 0):
                return
            os.replace(self.spill_path, rp)  # new spills go to a fresh file meanwhile
        done = 0
        with rp.open("rb") as f:
            while chunk := await _finish_in_thread(_read_some, f, self.batch, rp):
                try:
                    await self.sink.write(chunk)
                except Exception as e:
                    self._healthy = False
                    log.warning("replaying spilled events failed (%s); the rest stays in %s", type(e).__name__, rp)
                    if done:  # keep only what did not go in: this chunk and the unread rest
                        await _finish_in_thread(_rewrite_rest, rp, chunk, f)
                    self.sink_errors += 1  # counted once the file holds exactly what is left
                    return
                done += len(chunk)
                self.written += len(chunk)
                self.replayed += len(chunk)
        rp.unlink(missing_ok=True)
        log.info("replayed %d spilled events into the sink", done)

    async def _run(self) -> None:
        assert self._q is not None
        q = self._q
        if self.replay and self._pending_replay():
            await self._replay()
        while True:
            try:
                first = await asyncio.wait_for(q.get(), timeout=self.replay_interval) if self.replay else await q.get()
            except TimeoutError:
                if self._pending_replay():
                    await self._replay()
                continue
            events = [first]
            while len(events) < self.batch and not q.empty():
                events.append(q.get_nowait())
            self._inflight = events
            await self._flush(events)
            if self.replay and self._healthy and self._pending_replay():
                await self._replay()
            for _ in events:
                q.task_done()

    async def join(self) -> None:
        """Wait until every queued event has reached the sink (or the spill file)."""
        if self._q is not None:
            await self._q.join()

    async def close(self, timeout: float = 5.0) -> None:
        if self._q is None:
            return
        with contextlib.suppress(TimeoutError):
            with anyio.fail_after(timeout):
                await self._q.join()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # a batch cut off mid-write (a hanging database) was never acknowledged: spill it with the rest.
        # The sink may have committed it after all; the store skips repeated request ids on replay
        leftover, self._inflight = self._inflight, []
        while not self._q.empty():
            leftover.append(self._q.get_nowait())
        if leftover:
            self._spill(leftover)
        self._q = None
        await self.sink.close()


async def _finish_in_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a worker thread that a cancel waits for instead of abandoning: close() cancels the
    worker, and an abandoned thread would go on appending to the spill file beside close()'s own spill,
    or read the replay file after its handle is closed."""
    fut = asyncio.ensure_future(anyio.to_thread.run_sync(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


def _rewrite_rest(path: Path, events: list[Event], rest: BinaryIO) -> None:
    """Replace ``path`` with ``events`` and then the unread rest of its open handle ``rest``."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write("".join(e.model_dump_json() + "\n" for e in events).encode("utf-8"))
        shutil.copyfileobj(rest, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_some(f: BinaryIO, n: int, path: Path) -> list[Event]:
    """Up to ``n`` events from the spill file's open handle, skipping a line torn by a crash mid-write
    (logged, not raised); [] at the end of the file."""
    out: list[Event] = []
    while len(out) < n and (raw := f.readline()):
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            out.append(Event.model_validate_json(line))
        except ValueError:
            log.warning("%s: unreadable spilled event skipped", path)
    return out


def read_events(path: str | Path) -> list[Event]:
    p = Path(path)
    if not p.exists():
        return []
    return [Event.model_validate(json.loads(line)) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
