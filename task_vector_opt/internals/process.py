"""The settings that hold for the whole process, made in one place: ``configure_process``, which
``errors.run_cli`` (the start of every entry point: the four scripts, ``task-vector-opt``, the report command)
calls once.

- Optuna logs errors only: the engine logs each trial itself (score, timing, why it failed), and Optuna's own
  per-trial lines and warnings would repeat them, with a traceback for a Ctrl-C.

No other library setting holds for the whole process: vLLM's in-process setting holds only while its engine
starts (``vllm_internals.engine_in_this_process``), and lm-eval's loggers and progress bars are quietened around
one call and put back after it. The program's own logging (handlers and levels from --log_level) is set up by
``engine.setup_logging``.
"""
from __future__ import annotations

import logging

OPTUNA_LOG_LEVEL = logging.ERROR


def configure_process() -> None:
    """Make the process-wide settings (idempotent)."""
    import optuna

    optuna.logging.set_verbosity(OPTUNA_LOG_LEVEL)
