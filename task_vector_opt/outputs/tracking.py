"""--wandb: log every trial (score, best so far, weights, per-task metrics) to Weights & Biases.

Optional and off by default; without the flag nothing imports wandb. The project comes from WANDB_PROJECT
(default task-vector-opt); WANDB_MODE=offline logs locally (sync later with `wandb sync`).
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import optuna
from optuna.trial import TrialState

from task_vector_opt.errors import UsageError

DEFAULT_PROJECT = "task-vector-opt"


def check_wandb(enabled: bool) -> None:
    if enabled and importlib.util.find_spec("wandb") is None:
        raise UsageError("--wandb", "wandb is not installed; `pip install wandb` (then `wandb login`, or set "
                                    "WANDB_MODE=offline), or drop --wandb")


def _numbers(values: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class WandbTracker:
    """An Optuna callback that logs each finished trial as one wandb step; ``finish`` adds the final scores."""

    def __init__(self, study_name: str, inputs: dict[str, Any]):
        import wandb

        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=study_name,
                              group=study_name, config={"study_name": study_name, **inputs}, reinit="finish_previous")
        self.run.define_metric("trial")
        self.run.define_metric("*", step_metric="trial")

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        row: dict[str, Any] = {"trial": trial.number}
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            row["score"] = trial.value
        try:
            row["best_score"] = study.best_value
        except ValueError:  # nothing completed yet
            pass
        row.update(_numbers(trial.params, "weights/"))
        row.update(_numbers(trial.user_attrs, "metrics/"))
        self.run.log(row)

    def finish(self, result: Any | None = None) -> None:
        if result is not None:
            self.run.summary.update({"best_score": result.best_value, "best_trial": result.best_trial,
                                     **_numbers(result.holdout, "holdout/"),
                                     **_numbers(result.search_baselines, "baseline/")})
        self.run.finish()
