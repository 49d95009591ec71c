"""One small exception tree. Only ``serving/`` maps these to HTTP codes."""

from __future__ import annotations


class FeedrankError(Exception):
    """Base of every error feedrank raises on purpose."""


class SchemaError(FeedrankError):
    """Data or a request does not match the expected schema (HTTP 422).

    ``problems`` lists every problem found, each naming where (file, row, field) it is.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems: list[str] = list(problems or [])
        if self.problems:
            shown = self.problems[:50]
            more = len(self.problems) - len(shown)
            detail = "\n  - " + "\n  - ".join(shown)
            if more > 0:
                detail += f"\n  ... and {more} more"
            message = f"{message}{detail}"
        super().__init__(message)


class ConfigError(SchemaError):
    """A config file or override is wrong: unknown keys, wrong types, bad values."""


class NotFound(FeedrankError):
    """A named thing (user, item, model, file) does not exist (HTTP 404)."""


class CorruptFile(FeedrankError):
    """A file exists but cannot be read as what it claims to be."""


class DeadlineExceeded(FeedrankError):
    """A stage ran past the request's deadline."""


class ModelLoadError(FeedrankError):
    """A model bundle could not be loaded or failed its warm-up."""
