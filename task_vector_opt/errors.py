"""Errors that speak to the user: each one becomes one line on stderr and an exit code."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2, before any model loads."""

    exit_code = 2

    def __init__(self, flag: str | None, message: str):
        self.flag = flag
        super().__init__(f"{flag}: {message}" if flag else message)


class TaskVectorMismatch(UsageError):
    """The task vector does not fit the target (missing tensor or shape mismatch)."""

    def __init__(self, message: str):
        super().__init__(None, message)


class TrialFailure(RuntimeError):
    """A trial failed for a reason its evaluator understands; ``stops_study`` ends the search after it."""

    stops_study: bool = False


class SearchAborted(RuntimeError):
    """The search cannot go on (trials keep failing); completed trials stay in the storage."""


class StudyStopped(SearchAborted):
    """A trial failed in a way the user asked to stop on; completed trials stay in the storage."""


class UploadFailed(SearchAborted):
    """--push_to_hub failed after the model was saved locally (exit code 1, like an aborted search)."""
