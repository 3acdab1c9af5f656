"""Errors that the CLI reports as one clear line instead of a traceback."""


class OpenCodeGenError(Exception):
    """Base class of every user-facing error of opencodegen."""


class CheckpointError(OpenCodeGenError):
    """A checkpoint directory or file is missing, corrupt or does not match its config."""


class ConfigError(OpenCodeGenError):
    """A model or run configuration is invalid."""


class GenerationError(OpenCodeGenError):
    """Invalid generation request (bad parameters, prompt too long, ...)."""


class DataError(OpenCodeGenError):
    """A data file (benchmark, corpus, samples) is malformed."""
