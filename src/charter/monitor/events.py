"""Guard decisions as structured events, and the path that carries them off the response path.

The proxy hands each event to :class:`EventQueue.put`, which never blocks: a background task
batches events into a pluggable :class:`EventSink`. When the queue is full (or the sink fails)
events are appended to a spill file and counted, so none is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
from pydantic import BaseModel, Field

log = logging.getLogger("charter.monitor")

Decision = Literal["allowed", "flagged", "blocked_input", "blocked_output", "error", "rejected"]


class StageVerdict(BaseModel):
    stage: str
    score: float
    flagged: bool
    category: str | None = None
    latency_ms: float = 0.0
    escalated: bool = False
    #: output stage only: the 1-based upstream token at which the stream was flagged
    at_token: int | None = None


class Event(BaseModel):
    request_id: str = Field(default_factory=lambda: "req_" + uuid.uuid4().hex[:24])
    conversation_id: str | None = None
    #: a short hash of the client key (never the key), or "anonymous"
    key_id: str = "anonymous"
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
    #: the conversation and response text, only when the deployment enables content logging
    content: dict[str, Any] | None = None


@runtime_checkable
class EventSink(Protocol):
    async def write(self, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


class JsonlSink:
    """Appends events to a JSON-lines file (one event a line)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _append(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(lines)

    async def write(self, events: list[Event]) -> None:
        lines = "".join(e.model_dump_json() + "\n" for e in events)
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

    ``put`` is synchronous and O(1) (plus one small file append when spilling). Spilled events are
    in the sink's JSONL format, ready to be replayed by the monitoring store.
    """

    def __init__(self, sink: EventSink, spill_path: str | Path, *, maxsize: int = 10_000, batch: int = 256) -> None:
        self.sink = sink
        self.spill_path = Path(spill_path)
        self.maxsize = maxsize
        self.batch = batch
        self._q: asyncio.Queue[Event] | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.spilled = 0
        self.sink_errors = 0

    @property
    def depth(self) -> int:
        return self._q.qsize() if self._q is not None else 0

    async def start(self) -> None:
        self._q = asyncio.Queue(maxsize=self.maxsize)
        self._task = asyncio.create_task(self._run(), name="charter-events")

    def put(self, event: Event) -> None:
        if self._q is None:
            self._spill([event])
            return
        try:
            self._q.put_nowait(event)
        except asyncio.QueueFull:
            self._spill([event])

    def _spill(self, events: list[Event]) -> None:
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("a", encoding="utf-8") as f:
            f.write("".join(e.model_dump_json() + "\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
        self.spilled += len(events)

    async def _flush(self, events: list[Event]) -> None:
        try:
            await self.sink.write(events)
            self.written += len(events)
        except Exception:  # a failing sink must not take the proxy down
            self.sink_errors += 1
            log.exception("event sink failed; spilling %d events to %s", len(events), self.spill_path)
            await anyio.to_thread.run_sync(self._spill, events)

    async def _run(self) -> None:
        assert self._q is not None
        q = self._q
        while True:
            first = await q.get()
            events = [first]
            while len(events) < self.batch and not q.empty():
                events.append(q.get_nowait())
            await self._flush(events)
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
        leftover = []
        while not self._q.empty():
            leftover.append(self._q.get_nowait())
        if leftover:
            self._spill(leftover)
        self._q = None
        await self.sink.close()


def read_events(path: str | Path) -> list[Event]:
    p = Path(path)
    if not p.exists():
        return []
    return [Event.model_validate(json.loads(line)) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
