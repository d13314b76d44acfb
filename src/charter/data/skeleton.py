"""Render ``[PLACEHOLDER]`` markers in response skeletons as vague natural phrases.

A classifier trained on raw skeletons would learn "square brackets mean harmful"; rendered,
``[MATERIAL_1]`` reads "the first material": still non-operational, but natural text.
"""

from __future__ import annotations

import random
import re

from charter.data.templates import MARKER_ARTICLES, ORDINALS

#: a bracketed marker: a name in capitals of any script (``[MATERIAL_1]``, ``[MÉTODO_DE_PAGO]``), optionally
#: with a description after a colon (``[REDACTED_CODE: file enumeration]``); checked for capitals in ``_render``
MARKER = re.compile(r"\[([^\W\d_][^\W_]*(?:[_ \-'’][^\W_]+)*)(?::\s*([^\[\]\n]{1,160}))?\]")


def marker_phrase(marker: str, rng: random.Random) -> str:
    words = [w for w in re.split(r"[_\s\-]+", marker.lower()) if w]
    nums = [w for w in words if w.isdigit()]
    words = [w for w in words if not w.isdigit()]
    if nums and int(nums[0]) < len(ORDINALS):
        words.insert(0, ORDINALS[int(nums[0])])
    phrase = " ".join(words) or "item"
    return f"{rng.choice(MARKER_ARTICLES)} {phrase}"


def _render(m: re.Match[str], rng: random.Random) -> str:
    name, detail = m.group(1), m.group(2)
    if name != name.upper():
        return m.group(0)  # "[substrate]", "[nucleophile]": ordinary brackets, not a marker
    # "[REDACTED_CODE: POST everything to WEBHOOK_URL]" reads "the post everything to webhook url"
    return marker_phrase(detail if detail and detail.strip() else name, rng)


def render_skeleton(text: str, rng: random.Random) -> str:
    """Every marker rendered as a vague phrase, so no bracket is left to tell restricted text apart."""
    return MARKER.sub(lambda m: _render(m, rng), text)
