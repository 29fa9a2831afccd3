"""A finished study as the engine leaves it, built in a second: baselines, the engine's objective wrapper
(so elapsed_s and per-task details are set exactly as in a real run), inputs and holdout scores."""
from __future__ import annotations

import math

import optuna

from task_vector_opt.search.study import enqueue_baselines, make_objective, open_storage, open_study

LAYERS = [f"layer_{i:02d}" for i in range(6)] + ["norm"]


def synthetic_score(weights: dict[str, float], trial) -> tuple[float, dict]:
    """Two 'tasks' that like different weights, plus a judge tally, like the evaluators' details."""
    optimum = {name: 0.4 + 0.2 * i for i, name in enumerate(weights)}  # early layers like less of the vector
    skill = sum(math.exp(-4 * (w - optimum[name]) ** 2) for name, w in weights.items()) / len(weights)
    keep = sum(math.exp(-(w - 0.3) ** 2 / 4) for w in weights.values()) / len(weights)
    details = {"demo_skill": skill, "target_task": keep, "judge/cost_usd": 0.0012 * (trial.number + 1),
               "judge/requests": 8}
    return 0.7 * skill + 0.3 * keep, details


def make_finished_study(storage_url: str, n_trials: int = 16, name: str = "report-test") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    study = open_study(storage, name, "TPE", 0)
    study.set_user_attr("inputs", {"pipeline": "jglue", "targets": ["org/target-7b"], "base_model": "org/base-7b",
                                   "tuned_model": "org/tuned-7b-chat", "optimize_mode": "layer",
                                   "optuna_sampler": "TPE", "optuna_seed": 0, "weight_min": 0.0,
                                   "weight_max": 2.0, "dtype": "bfloat16", "skip_embed": False,
                                   "evaluator": {"tasks": ["demo_skill", "target_task"]}})
    enqueue_baselines(study, LAYERS)
    study.optimize(make_objective(LAYERS, 0.0, 2.0, synthetic_score), n_trials=n_trials)
    study.set_user_attr("holdout", {"w=0": 0.41, "w=1": 0.77, "best": 0.81})
    return study
