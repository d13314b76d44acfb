"""Regenerate {es,fr,de,pt}.json from the hand-written tables words_*.txt.

Each table line is ``english|es|fr|de|pt``; the first line for an English entry wins.
Run: python src/charter/transforms/wordlists/build.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
LANGS = ("es", "fr", "de", "pt")


def main() -> None:
    tables: dict[str, dict[str, str]] = {lang: {} for lang in LANGS}
    for src in sorted(HERE.glob("words_*.txt")):
        for line in src.read_text("utf-8").splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            en, *tr = (c.strip() for c in line.split("|"))
            assert len(tr) == len(LANGS), line
            for lang, word in zip(LANGS, tr):
                tables[lang].setdefault(en.lower(), word)
    for lang, entries in tables.items():
        doc = {"lang": lang, "source": "charter hand-written word list", "entries": entries}
        (HERE / f"{lang}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=0) + "\n", "utf-8")
        print(lang, len(entries))


if __name__ == "__main__":
    main()
