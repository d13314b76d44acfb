"""Importing this module registers every built-in transform."""

from charter.transforms import (  # noqa: F401
    charlevel,
    ciphers,
    encodings,
    formatting,
    lexical,
    linguistic,
    noise,
    structural,
    suffix,
    translation,
    wordplay,
    wrappers,
)
