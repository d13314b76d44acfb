"""Render ``[PLACEHOLDER]`` markers in response skeletons as vague natural phrases.

A classifier trained on raw skeletons would learn "square brackets mean harmful"; rendered,
``[MATERIAL_1]`` reads "the first material": still non-operational, but natural text.
"""

from __future__ import annotations

import random
import re

from charter.data.templates import MARKER_ARTICLES, ORDINALS

MARKER = re.compile(r"\[([A-Z][A-Z0-9_ \-]*)\]")


def marker_phrase(marker: str, rng: random.Random) -> str:
    words = [w for w in re.split(r"[_\s\-]+", marker.lower()) if w]
    nums = [w for w in words if w.isdigit()]
    words = [w for w in words if not w.isdigit()]
    if nums and int(nums[0]) < len(ORDINALS):
        words.insert(0, ORDINALS[int(nums[0])])
    phrase = " ".join(words) or "item"
    return f"{rng.choice(MARKER_ARTICLES)} {phrase}"


def render_skeleton(text: str, rng: random.Random) -> str:
    return MARKER.sub(lambda m: marker_phrase(m.group(1), rng), text)
