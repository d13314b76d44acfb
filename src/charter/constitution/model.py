"""The constitution: a written policy of restricted and permitted categories.

A constitution has domains; a domain groups a restricted category with the permitted
neighbours that look like it, so that the boundary between them is explicit.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator
from pydantic_core import PydanticSerializationError

_ID = re.compile(r"^[a-z][a-z0-9_]*$")
_NON_WORD = re.compile(r"[\W_]+")


def seed_key(text: str) -> str:
    """What makes two seed requests (or hard negatives) the same: case, spacing, punctuation and
    compatibility forms do not count ("how long do i boil an egg" and "...egg?" are one seed).

    Splits are drawn per seed, so a repeated seed could put one text in both train and test
    (or, across categories, give it two labels). Where punctuation is most of the text (Morse code),
    it is the content, and only spacing and case are folded.
    """
    s = unicodedata.normalize("NFKC", text).casefold()
    w = _NON_WORD.sub("", s)
    return w if 2 * len(w) >= len("".join(s.split())) else " ".join(s.split())


class Kind(str, Enum):
    restricted = "restricted"
    permitted = "permitted"


class Severity(str, Enum):
    none = "none"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Seed(_Strict):
    """One seed text. Plain strings in YAML become a Seed with the category's default language."""

    text: str = Field(min_length=1, max_length=4000)
    lang: str = "en"
    note: str | None = None

    @field_validator("text")
    @classmethod
    def _strip(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
        return v


def _coerce_seeds(v: object) -> object:
    if isinstance(v, list):
        return [{"text": s} if isinstance(s, str) else s for s in v]
    return v


class ExchangeSeed(_Strict):
    """A seed (user message, assistant reply) pair: the category is a property of the *reply*.

    For classifiers of assistant behaviour (e.g. the wellbeing monitor), where the user turn is
    context and carries no label of its own; variants and splits are per exchange.
    """

    user: str = Field(min_length=1, max_length=4000)
    reply: str = Field(min_length=1, max_length=8000)
    lang: str = "en"
    note: str | None = None

    _s = field_validator("user", "reply")(Seed._strip.__func__)  # type: ignore[attr-defined]


class Seeds(_Strict):
    """Seed examples for a category.

    ``requests`` are user turns. ``responses`` are, for a restricted category, response
    *skeletons* whose operational content is replaced by ``[PLACEHOLDER]`` markers, and for a
    permitted category, benign answers. ``exchanges`` (optional) are paired (user, reply) seeds;
    a category that lists exchanges may omit ``requests``.
    """

    requests: list[Seed]
    responses: list[Seed] = Field(default_factory=list)
    exchanges: list[ExchangeSeed] = Field(default_factory=list)

    _c1 = field_validator("requests", "responses", mode="before")(_coerce_seeds)

    @model_validator(mode="before")
    @classmethod
    def _requests_optional_with_exchanges(cls, v: object) -> object:
        if isinstance(v, dict) and v.get("exchanges") and "requests" not in v:
            return {**v, "requests": []}
        return v

    @model_validator(mode="after")
    def _some_seeds(self) -> Seeds:
        if not self.requests and not self.exchanges:
            raise ValueError("requests: needs at least one seed request (or seed exchanges)")
        return self

    @model_serializer(mode="wrap")
    def _omit_empty_exchanges(self, handler):  # type: ignore[no-untyped-def]
        # keeps the fingerprint of constitutions without exchanges what it was before the field
        d = handler(self)
        if isinstance(d, dict) and not self.exchanges:
            d.pop("exchanges", None)
        return d


class Category(_Strict):
    id: str
    name: str
    kind: Kind
    description: str = Field(min_length=10)
    rules: list[str] = Field(default_factory=list)
    severity: Severity = Severity.none
    languages: list[str] = Field(default_factory=list)
    seeds: Seeds
    hard_negatives: list[Seed] = Field(default_factory=list)

    _c2 = field_validator("hard_negatives", mode="before")(_coerce_seeds)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("must be lower_snake_case (a-z, 0-9, _), starting with a letter")
        return v

    @field_validator("severity")
    @classmethod
    def _severity_only_restricted(cls, v: Severity, info: ValidationInfo) -> Severity:
        if info.data.get("kind") is Kind.permitted and v is not Severity.none:
            raise ValueError("only restricted categories have a severity")
        return v

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: object) -> object:
        if v not in ("restricted", "permitted", Kind.restricted, Kind.permitted):
            raise ValueError("must be 'restricted' or 'permitted'")
        return v

    @model_validator(mode="after")
    def _severity_matches_kind(self) -> Category:
        if self.kind is Kind.restricted and self.severity is Severity.none:
            raise ValueError("severity: a restricted category needs a severity (low..critical)")
        if self.kind is Kind.permitted and self.hard_negatives:
            raise ValueError("hard_negatives: only restricted categories list hard negatives")
        return self

    @property
    def restricted(self) -> bool:
        return self.kind is Kind.restricted


class Domain(_Strict):
    id: str
    name: str
    description: str = ""
    categories: list[Category] = Field(min_length=1)

    _i = field_validator("id")(Category._id.__func__)  # type: ignore[attr-defined]


class Constitution(_Strict):
    version: Literal[1] = 1
    name: str
    description: str = ""
    languages: list[str] = Field(default_factory=lambda: ["en"])
    domains: list[Domain] = Field(min_length=1)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, int):  # 'version: true' and 'version: 1.0' read as 1
            raise ValueError("must be the integer 1")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> Constitution:
        for what, keys in (("domain id", [d.id for d in self.domains]), ("category id", [c.id for c in self.categories]),
                           ("seed", [seed_key(s.text) for c in self.categories for s in c.seeds.requests + c.hard_negatives]),
                           # an exchange pair repeated would sit in two splits, or carry two labels
                           ("seed exchange", [f"{seed_key(e.user)} / {seed_key(e.reply)}" for c in self.categories
                                              for e in c.seeds.exchanges])):
            seen: set[str] = set()
            for k in keys:
                if k in seen:
                    raise ValueError(f"{what} {k!r} is used twice")
                seen.add(k)
        if not any(c.restricted for c in self.categories):
            raise ValueError("a constitution needs at least one restricted category")
        if all(c.restricted for c in self.categories):
            raise ValueError("a constitution needs at least one permitted category")
        return self

    @property
    def categories(self) -> list[Category]:
        return [c for d in self.domains for c in d.categories]

    def category(self, cid: str) -> Category:
        for c in self.categories:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def domain_of(self, cid: str) -> Domain:
        for d in self.domains:
            if any(c.id == cid for c in d.categories):
                return d
        raise KeyError(cid)

    @property
    def restricted(self) -> list[Category]:
        return [c for c in self.categories if c.restricted]

    @property
    def permitted(self) -> list[Category]:
        return [c for c in self.categories if not c.restricted]

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: stable across YAML formatting changes."""
        try:
            data = self.model_dump_json()
        except PydanticSerializationError as e:
            # pydantic wraps what a serializer function raises, Ctrl-C's or SIGTERM's KeyboardInterrupt too
            # (`charter train` stopped mid-fingerprint exited 1 with a traceback instead of 130)
            if "KeyboardInterrupt" in str(e):
                raise KeyboardInterrupt from e
            raise
        return hashlib.sha256(data.encode()).hexdigest()
