"""Charter: constitutional classifiers, red teaming and misuse monitoring for LLM deployments."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from charter.guard import Guard, Verdict


def __getattr__(name: str) -> Any:  # lazy, so `import charter` stays cheap
    if name in ("Guard", "Verdict"):
        import charter.guard as g

        return getattr(g, name)
    raise AttributeError(name)


__all__ = ["Guard", "Verdict", "__version__"]
