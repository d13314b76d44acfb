"""The transform contract shared by data augmentation, attack generation and normalisation.

A transform is a small class with a ``name``, a ``family`` and ``apply(text, rng)``. Where a
transform can be undone, ``decode(text)`` returns the original (or ``None`` when the input does
not look like this transform's output); normalisation uses decoders to produce extra views.
"""

from __future__ import annotations

import inspect
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from charter.registry import Registry


class Transform(ABC):
    name: ClassVar[str]
    family: ClassVar[str]
    #: one line for `charter transforms list`
    description: ClassVar[str] = ""
    #: True when decode() undoes apply(): exactly, or up to what the class says it loses (case, line breaks)
    reversible: ClassVar[bool] = False
    #: True when apply() needs the optional encoder wheel (charter[encoder]); the offline data generator
    #: never draws such a transform, and the red team uses it only where the wheel is installed
    needs_encoder: ClassVar[bool] = False
    #: False for attack-only transforms that the offline data generator does not draw: normalisation
    #: undoes them exactly (a styled or marked letter folds back to its plain one), so training on them
    #: would teach nothing, and adding them left the default training data as it was
    augments: ClassVar[bool] = True

    @abstractmethod
    def apply(self, text: str, rng: random.Random) -> str: ...

    def decode(self, text: str) -> str | None:
        """Undo ``apply``; ``None`` if ``text`` does not look like this transform's output."""
        raise NotImplementedError(f"{self.name} cannot be decoded")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.family}/{self.name}>"


class ConversationTransform(Transform):
    """A transform whose natural output is a conversation (role/content dicts ending with a user turn).

    ``apply`` flattens the turns so that it composes with text transforms; the data engine calls
    ``apply_messages`` when it wants a ``messages`` record.
    """

    @abstractmethod
    def apply_messages(self, text: str, rng: random.Random) -> list[dict[str, str]]: ...

    def apply(self, text: str, rng: random.Random) -> str:
        return render_turns(self.apply_messages(text, rng))


def render_turns(messages: Sequence[dict[str, str]]) -> str:
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class Chain:
    """Transforms applied left to right."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transforms]

    @property
    def families(self) -> list[str]:
        return [t.family for t in self.transforms]

    def apply(self, text: str, rng: random.Random) -> str:
        for t in self.transforms:
            text = t.apply(text, rng)
        return text

    def decode(self, text: str) -> str | None:
        for t in reversed(self.transforms):
            if not t.reversible:
                return None
            out = t.decode(text)
            if out is None:
                return None
            text = out
        return text


def _plugin_problem(cls: type) -> str | None:
    """What keeps a plugin class from working as a transform, or None."""
    if not issubclass(cls, Transform):
        return "is not a subclass of charter.transforms.Transform"
    if inspect.isabstract(cls):
        return f"is abstract (it does not implement {', '.join(sorted(cls.__abstractmethods__))})"
    missing = [a for a in ("name", "family", "description") if not isinstance(getattr(cls, a, None), str)]
    if missing:
        return f"has no {' or '.join(missing)} (a class attribute string)"
    bad = [a for a in ("reversible", "needs_encoder", "augments") if not isinstance(getattr(cls, a), bool)]
    return f"has {' and '.join(bad)} not True or False" if bad else None


TRANSFORMS: Registry[type[Transform]] = Registry("charter.transforms", builtins="charter.transforms.library",
                                                 check=_plugin_problem)


def get_transform(name: str) -> Transform:
    return TRANSFORMS.get(name)()


def chain(*names: str) -> Chain:
    return Chain([get_transform(n) for n in names])


def runnable(cls: type[Transform]) -> bool:
    """Whether the transform can run here (one that needs the encoder wheel cannot without it)."""
    if not cls.needs_encoder:
        return True
    from charter.classifiers.encoder import encoder_available

    return encoder_available()


def families() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, cls in TRANSFORMS:
        out.setdefault(cls.family, []).append(name)
    return out
