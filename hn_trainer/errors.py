"""Errors that reach the user: each names what was wrong and where."""

from __future__ import annotations

from os import PathLike


class HNTrainerError(Exception):
    """Base class of the errors the command line reports without a traceback."""


class DataError(HNTrainerError):
    """Bad input data, located by file, line and id where those are known.

    Example:
        >>> str(DataError("duplicate id", file="corpus.jsonl", line=12, id="doc-7"))
        "corpus.jsonl:12: id 'doc-7': duplicate id"
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | PathLike | None = None,
        line: int | None = None,
        id: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.line = line
        self.id = id
        self.reason = message
        where = ""
        if self.file is not None:
            where = self.file if line is None else f"{self.file}:{line}"
        if id is not None:
            where = f"{where}: id {id!r}" if where else f"id {id!r}"
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(HNTrainerError):
    """A configuration value or field that cannot be used."""


class EncoderError(HNTrainerError):
    """An encoder spec that cannot be resolved or loaded."""
