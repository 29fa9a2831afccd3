"""Multi-fidelity: which Optuna pruner stops a trial early, shared by every evaluator that reports running scores.

A baseline trial (w = 1, w = 0) is never pruned: the summary and the verdict need its full search score.
"""
from __future__ import annotations

import argparse
from typing import Any

from task_vector_opt.errors import UsageError

PRUNERS = ("median", "successive_halving", "hyperband")
DEFAULT_PRUNER = "median"
MEDIAN_STARTUP_TRIALS = 4  # the two baselines and two more run to the end before any median comparison


def pruner_from_args(args: argparse.Namespace) -> str | None:
    """The pruner the run uses (None: no pruning); --pruner without --prune is an input error."""
    prune = args.prune
    name = args.pruner
    if name is not None and not prune:
        raise UsageError("--pruner", f"{name!r} was given without --prune; add --prune to stop hopeless trials "
                                     "early, or drop --pruner")
    if name is not None and name not in PRUNERS:
        raise UsageError("--pruner", f"unknown pruner {name!r}; choose one of {', '.join(PRUNERS)}")
    return (name or DEFAULT_PRUNER) if prune else None


def make_pruner(name: str | None):
    """Optuna's pruner for ``name``; None for no pruning."""
    import optuna

    if name is None:
        return None
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    raise ValueError(f"unknown pruner {name!r}")


def should_stop(trial: Any) -> bool:
    """The pruner's decision for ``trial`` after its last report; baselines always run to the end."""
    if "baseline" in trial.user_attrs:
        return False
    return bool(trial.should_prune())
