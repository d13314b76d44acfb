"""Importing this module registers every built-in transform."""

from charter.transforms import (  # noqa: F401
    charlevel,
    ciphers,
    encodings,
    lexical,
    linguistic,
    noise,
    structural,
    translation,
    wrappers,
)
