"""Errors that speak to the user: each one becomes one line on stderr and an exit code."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Sequence


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


def parse_one_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse with its own errors turned into UsageError (one line, exit 2)."""

    def error(message: str) -> None:  # argparse's default prints usage; we print one line
        raise UsageError(None, f"{message} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser.parse_args(argv)


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> None:
    """Run an entry point: UsageError becomes one line on stderr and its exit code."""
    try:
        main(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SearchAborted as exc:  # completed trials are kept in the storage; rerunning resumes
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        logging.getLogger(__name__).warning("interrupted; completed trials are kept in the study storage")
        # A storage connection the interrupt caught mid-query is reset when it is collected at exit; SQLAlchemy
        # logs that reset's error with a traceback. The open transaction is rolled back either way (completed
        # trials were committed before), so after Ctrl-C that message is noise.
        logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
        sys.exit(130)
