"""Regenerate en_vocab.json, the word counts that ``unscramble`` corrects noisy words to.

The words are those of the packaged constitutions (seeds, hard negatives, response skeletons,
descriptions) and of the generator's phrase banks, so the vocabulary covers the policy's own
domain words. Rerun after editing a packaged constitution:
python src/charter/transforms/wordlists/build_vocab.py
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent  # src/charter


def main() -> None:
    from charter.data import templates
    from charter.transforms._text import COMMON_WORDS

    counts: Counter[str] = Counter()
    for path in sorted((ROOT / "constitutions").glob("*.yaml")):
        counts.update(re.findall(r"[a-z]{2,}", path.read_text("utf-8").lower()))
    banks = " ".join(str(v) for k, v in vars(templates).items() if k.isupper())
    counts.update(re.findall(r"[a-z]{2,}", banks.lower()))
    counts.update({w: 1 for w in COMMON_WORDS if len(w) >= 2})
    words = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    doc = {"source": "charter's packaged constitutions and phrase banks (build_vocab.py)", "words": words}
    (HERE / "en_vocab.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n", "utf-8")
    print(len(words), "words")


if __name__ == "__main__":
    main()
