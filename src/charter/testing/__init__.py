"""Test helpers reusable across Charter's test suites (no pytest dependency)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from charter.testing.openai_server import RecordedRequest, Reply, ScriptedOpenAI

__all__ = ["RecordedRequest", "Reply", "ScriptedOpenAI", "interrupt_cli", "wait_for"]


def wait_for(cond: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``cond`` until it is truthy or ``timeout`` passes; its last value (events reach a sink
    just after the response that made them ends)."""
    deadline = time.monotonic() + timeout
    while not (v := cond()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return v


def interrupt_cli(args: Sequence[str], ready: Callable[[], Any], *, env: dict[str, str] | None = None,
                  sig: int = signal.SIGTERM, timeout: float = 120.0) -> tuple[bool, int, str]:
    """Run ``charter ARGS`` in a child process and send it ``sig`` once ``ready()`` is truthy (or the child
    ended, or ``timeout`` passed): (whether it was still running when signalled, its exit status, its
    stderr). ``env`` is added to this process's environment."""
    proc = subprocess.Popen([sys.executable, "-c", "from charter.cli import run; run()", *args],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        alive = proc.poll() is None
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return alive, proc.returncode, err
