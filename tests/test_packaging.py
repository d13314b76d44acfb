"""Every data file the code reads ships in the wheel: pyproject's package-data covers it.

An editable install reads ``src/`` directly, so a resource missing from package-data passes every
other test and fails only in an installed wheel (the gloss lexicons, once, nearly).
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "charter"
#: inputs of the scripts that regenerate shipped files, not read at run time
BUILD_INPUTS = ("transforms/wordlists/words_*.txt",)


def test_package_data_covers_every_data_file() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["charter"]
    data = [p.relative_to(PKG).as_posix() for p in PKG.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(d.endswith(".tsv") for d in data) and any(d.startswith("models/default/") for d in data)
    missing = [d for d in data if not any(fnmatch.fnmatch(d, g) for g in (*globs, *BUILD_INPUTS))]
    assert missing == [], f"add these to [tool.setuptools.package-data] in pyproject.toml: {missing}"
