"""Which backend scores lm-eval's log-likelihood requests on the live model (--mc_scorer): the names and the
flag's check, kept free of torch so that the command line can read them before anything heavy loads."""
from __future__ import annotations

from typing import Any

from task_vector_opt.errors import UsageError

SCORER_FLAG = "--mc_scorer"
# context_once: each distinct context runs once, every choice scored after it (evaluation/context_once.py);
# hflm: lm-eval's HFLM, one pass per (context, choice) request. Generation always runs through HFLM.
SCORERS = ("context_once", "hflm")
DEFAULT_SCORER = "context_once"


def parse_scorer(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in SCORERS:
        raise UsageError(SCORER_FLAG, f"{value!r} is not a scorer; give one of {', '.join(SCORERS)} "
                                      f"(default {DEFAULT_SCORER})")
    return text
