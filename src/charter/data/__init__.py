"""Synthetic data: records, generators (offline templates, llm), splits, hygiene and manifests."""

from charter.data.base import Generator
from charter.data.records import Label, Message, Record, RecordKind, Split

__all__ = ["Generator", "Label", "Message", "Record", "RecordKind", "Split"]
