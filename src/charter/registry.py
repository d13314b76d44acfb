"""Plugin registries backed by entry points, in the manner of inspect_ai.

Built-in components register with a decorator; third-party packages add theirs through an
entry-point group (``charter.transforms``, ``charter.attacks``, ``charter.graders``, ...)
without forking Charter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from charter.errors import CharterError

T = TypeVar("T")
log = logging.getLogger("charter.registry")


class Registry(Generic[T]):
    def __init__(self, group: str, builtins: str | None = None, check: Callable[[Any], str | None] | None = None) -> None:
        self.group = group
        self._builtins = builtins  # module whose import registers the built-in components
        self._check = check  # what is wrong with a plugin's object (None: nothing)
        self._items: dict[str, T] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "name", None) or getattr(obj, "__name__")
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.group}: {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:  # other threads wait for the whole registry
            # while plugins import, their own lookups (a plugin building on a built-in) see what is
            # registered so far instead of starting the load again
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                self._load_all()
            finally:
                self._loading = False

    def _load_all(self) -> None:
        if self._builtins:
            __import__(self._builtins)
        before = set(self._items)
        try:
            self._load_plugins()
        except BaseException:
            # a later attempt starts from the built-ins again (the plugins that did load would read as
            # name clashes with themselves)
            for k in set(self._items) - before:
                del self._items[k]
            raise
        # only now: a failed load must fail every time, never leave a registry that silently lacks the plugin
        self._loaded = True

    def _load_plugins(self) -> None:
        for ep in entry_points(group=self.group):
            dist = f" from package {ep.dist.name!r}" if getattr(ep, "dist", None) else ""
            if ep.name in self._items:  # a built-in (or an earlier plugin) keeps the name
                log.warning("%s plugin %r (%s)%s is not used: the name is taken by %r; rename the entry point",
                            self.group, ep.name, ep.value, dist, self._items[ep.name])
                continue
            try:
                obj = ep.load()
            except (Exception, SystemExit) as e:  # a plugin's import error, missing attribute, sys.exit() ...
                raise CharterError(
                    f"{self.group} plugin {ep.name!r} ({ep.value}){dist} failed to load: {type(e).__name__}: {e}. "
                    "Fix or uninstall that package.") from e
            problem = self._problem(ep.name, obj)
            if problem:  # caught here, not as an AttributeError wherever the object is first used
                raise CharterError(f"{self.group} plugin {ep.name!r} ({ep.value}){dist} {problem}. Fix or uninstall that package.")
            self._items[ep.name] = obj

    def _problem(self, name: str, obj: object) -> str | None:
        """Why a plugin's object cannot be registered under ``name``, or None."""
        if not isinstance(obj, type):
            return f"is not a class but {type(obj).__name__} {obj!r}"
        own = getattr(obj, "name", None)
        if isinstance(own, str) and own != name:
            return f"has name {own!r}; the entry point must use the same name"
        return self._check(obj) if self._check else None

    @staticmethod
    def needs(*methods: str) -> Callable[[type], str | None]:
        """A plugin check: the class defines these methods (``charter.attacks`` need ``run``)."""
        def check(cls: type) -> str | None:
            missing = [m for m in methods if not callable(getattr(cls, m, None))]
            return f"has no {' or '.join(missing)} method" if missing else None

        return check

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.group.split('.')[-1][:-1]} {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __iter__(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(sorted(self._items.items()))

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items
