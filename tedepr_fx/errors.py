"""One error type per kind of mistake a user can make.

Every error is a ``ValueError`` (or ``RuntimeError`` for the untraceable case) so
that callers who do not care about the kind can still catch it broadly, and every
message names the file, line, layer or argument at fault.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where in a rule file something is: 1-based line and column."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class LocatedError:
    """One problem in a rule file: where it is, which key, and what is wrong."""

    location: Location
    path: str  # dotted key path, e.g. "rules[2].factorize.rank"
    message: str

    def __str__(self) -> str:
        key = f"{self.path}: " if self.path else ""
        return f"{self.location}: {key}{self.message}"


class TedeprError(Exception):
    """Base class of every error tedepr_fx raises on purpose."""


class RuleError(TedeprError, ValueError):
    """A rule file (or string, or dict) is invalid. ``errors`` lists every problem found."""

    def __init__(self, errors: list[LocatedError] | LocatedError | str):
        if isinstance(errors, str):
            errors = [LocatedError(Location("<rules>"), "", errors)]
        elif isinstance(errors, LocatedError):
            errors = [errors]
        self.errors: list[LocatedError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class LayerError(TedeprError, ValueError):
    """A rule cannot be applied to a layer (unsupported format, bad modes, rank too big...)."""

    def __init__(self, layer: str, message: str, rule: str | None = None):
        self.layer = layer
        self.rule = rule
        where = f"layer {layer!r}" + (f" (rule {rule!r})" if rule else "")
        super().__init__(f"{where}: {message}")


class CaptureError(TedeprError, RuntimeError):
    """The model (or its example inputs) cannot be captured or run."""


class BudgetError(TedeprError, ValueError):
    """A sparsity budget cannot be met."""


class DataError(TedeprError, ValueError):
    """Scoring data is missing, malformed, or produced non-finite scores."""


class StorageError(TedeprError, ValueError):
    """A saved model cannot be read back as it was written (truncated, corrupted, newer format,
    legacy pickle without ``trust_pickle``, or a base model that does not match its record)."""


class CostWarning(UserWarning):
    """A rewrite makes a layer cost more FLOPs than the dense layer it replaces."""
