"""Errors Charter raises for bad input. The CLI prints their message, never a traceback."""


class CharterError(Exception):
    """Base class: a user-facing error with a clear one-line (or few-line) message."""


class ConstitutionError(CharterError):
    """A constitution file is missing, malformed or invalid."""


class ArtifactError(CharterError):
    """A model or dataset artifact is missing, tampered with, or does not match its manifest."""


class GeneratorError(CharterError):
    """A data generator failed (e.g. the LLM endpoint kept failing)."""


class InputError(CharterError, ValueError):
    """The guard was given input it cannot check (wrong type or shape, or over a size limit)."""


class UsageError(CharterError):
    """A command-line option's value is malformed (the CLI exits 2, as for other usage errors)."""


class ClassifierError(CharterError):
    """A classifier failed on an input (a score that is not a number): the caller fails closed."""
