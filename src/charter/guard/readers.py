"""Stage 1's readings of many texts at once, on worker processes.

Training reads some 60,000 texts through stage 1 (the training requests' worst views for stage 2, then
the calibration and test splits): normalisation and hashing are pure Python, so threads would queue on
the GIL while the second core idles. Worker processes each rebuild stage 1 from its arrays and read a
share; a reading is a pure function of the text and the weights, so the results are the ones read in
one process.

Workers are spawned, so a script that trains or recalibrates through the library must do so under
``if __name__ == "__main__":`` (each worker imports the main module); the ``charter`` command does.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from charter.classifiers.encoder import usable_cores
from charter.classifiers.features import NgramHasher
from charter.classifiers.linear import NgramClassifier
from charter.guard.guard import Reading, stage1_reading

#: fewer texts than this are read in this process: starting workers costs a second or two
MIN_PARALLEL_TEXTS = 4000
CHUNK = 500
#: at most this many workers (about 150 MB each), however many cores the affinity mask shows: a
#: container's CPU quota does not show there
MAX_WORKERS = 8

_worker: dict[str, Any] = {}


def _start(params: dict[str, Any], arrays: dict[str, Any], classes: list[str]) -> None:
    # Ctrl-C reaches the whole process group: the parent stops the pool, a worker need not die noisily
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:  # a parent killed outright cannot stop its pool: leave with it, not block forever
        threading.Thread(target=lambda: (parent.join(), os._exit(0)), daemon=True).start()
    s1 = NgramClassifier.from_arrays(params, arrays, classes)
    _worker["stage1"], _worker["hasher"] = s1, s1.hasher()


def _read_with(stage1: NgramClassifier, hasher: NgramHasher, texts: Sequence[str]) -> list[Reading]:
    return [stage1_reading(stage1, hasher, t) for t in texts]


def _read(texts: list[str]) -> list[Reading]:
    return _read_with(_worker["stage1"], _worker["hasher"], texts)


class Stage1Readers:
    """``read(texts)`` gives ``stage1_reading`` of each text, in order, on ``workers`` processes (default:
    one per usable core) when there are enough texts to pay for starting them. Use as a context manager;
    the workers start on the first large read and stop on exit."""

    def __init__(self, stage1: NgramClassifier, workers: int | None = None) -> None:
        self.stage1 = stage1
        self.workers = workers if workers is not None else min(usable_cores(), MAX_WORKERS)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Stage1Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def read(self, texts: Sequence[str]) -> list[Reading]:
        texts = list(texts)
        if self.workers <= 1 or len(texts) < MIN_PARALLEL_TEXTS:
            return _read_with(self.stage1, self.stage1.hasher(), texts)
        if self._pool is None:
            s1 = self.stage1
            # spawn, not fork: the parent has BLAS and encoder threads, which a forked child would inherit locked
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start,
                                             initargs=(s1.get_params(), s1.to_arrays(), [str(c) for c in s1.classes_]))
        chunks = [texts[i : i + CHUNK] for i in range(0, len(texts), CHUNK)]
        return [r for part in self._pool.map(_read, chunks) for r in part]
