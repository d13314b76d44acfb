"""The generator contract.

A generator turns a constitution into records: ``generate(constitution, n, seed, holdout)``
yields about ``n`` records, deterministically for a given seed. Each record carries a stable
``seed_id`` and the split that :func:`charter.data.splits.split_of` gives it; records whose
transform chain uses a family in ``holdout`` must come from test-split seeds only. The
pipeline (:mod:`charter.data.pipeline`) re-checks both, then deduplicates and writes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar

from charter.constitution.model import Category, Constitution
from charter.data.records import Record


class Generator(ABC):
    name: ClassVar[str]
    #: whether the pipeline may call ``generate`` again with a larger ``n`` when deduplication
    #: leaves fewer than ``n`` records (cheap offline; paid requests, all made again, for an LLM)
    regenerate_on_shortfall: ClassVar[bool] = True

    def __init__(self) -> None:
        #: counters worth reporting in the manifest (e.g. malformed replies, transform errors)
        self.stats: Counter[str] = Counter()

    @abstractmethod
    def generate(
        self, constitution: Constitution, n: int, seed: int, holdout: frozenset[str] = frozenset()
    ) -> Iterator[Record]: ...

    def params(self) -> dict[str, Any]:
        """Parameters recorded in the manifest (never secrets)."""
        return {}

    def transform_families(self) -> dict[str, str]:
        """Transform name -> family for the transforms this generator applies."""
        return {}


def host_category(constitution: Constitution, restricted: Category) -> Category:
    """Where a restricted category's hard negatives live: the first permitted category of its
    domain, else the first permitted category of the constitution."""
    domain = constitution.domain_of(restricted.id)
    for c in domain.categories:
        if not c.restricted:
            return c
    return constitution.permitted[0]
