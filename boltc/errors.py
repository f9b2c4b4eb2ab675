"""The project's own error types. A user mistake is always one of these, never a bare traceback.

Every error that comes from a place in a file carries that place (file, line, column or row) so the CLI
can print `model.bolt:12:9: error: ...` with the source line and a caret.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    file: str
    line: int            # 1-based; 0 when unknown
    column: int = 0      # 1-based; 0 when the whole line (or a row of a data file) is meant

    def __str__(self) -> str:
        if self.line and self.column:
            return f"{self.file}:{self.line}:{self.column}"
        if self.line:
            return f"{self.file}:{self.line}"
        return self.file


class BoltError(Exception):
    """Base class: anything boltc raises on purpose. `location` may be None."""

    def __init__(self, message: str, location: Location | None = None, source_line: str | None = None):
        super().__init__(message)
        self.message = message
        self.location = location
        self.source_line = source_line

    def render(self) -> str:
        """`file:line:col: error: message`, then the source line and a caret under the column."""
        head = f"{self.location}: error: {self.message}" if self.location else f"error: {self.message}"
        if self.source_line is not None and self.location and self.location.column:
            caret = " " * (self.location.column - 1) + "^"
            return f"{head}\n    {self.source_line.rstrip()}\n    {caret}"
        return head

    def __str__(self) -> str:
        return self.render()


class BoltSyntaxError(BoltError):
    """The .bolt text does not follow the grammar."""


class BoltValidationError(BoltError):
    """The .bolt text parses but the model is wrong (names, types, shapes, memory)."""


class BoltErrorGroup(BoltError):
    """Several errors found in one pass over a file; `errors` holds each, in source order."""

    def __init__(self, errors: list[BoltError]):
        self.errors = sorted(errors, key=lambda e: (e.location.line, e.location.column) if e.location else (0, 0))
        super().__init__("; ".join(e.message for e in self.errors), self.errors[0].location if self.errors else None)

    def render(self) -> str:
        return "\n".join(e.render() for e in self.errors)


class DataError(BoltError):
    """A data file (XC, svmlight, CSV) is malformed: names the file and row (line)."""


class ModelFileError(BoltError):
    """A saved model (.boltc) is truncated, tampered with, or from an incompatible version."""


class BackendError(BoltError):
    """Native code could not be built or loaded."""


class DependencyError(BoltError):
    """An optional dependency is missing; the message says what to install."""


def source_line(text: str, line: int) -> str | None:
    """Line `line` (1-based) of `text` for an error message. A tab becomes one space so that the caret,
    placed `column - 1` spaces in, stays under the column (columns count a tab as one character)."""
    lines = text.splitlines()
    return lines[line - 1].replace("\t", " ") if 0 < line <= len(lines) else None
