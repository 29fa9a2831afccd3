"""merge_recipe.json, saved beside the merged model: the formula, the inputs, the study and the best weights, enough
to understand and reproduce the merge."""
from __future__ import annotations

from typing import Any

from task_vector_opt import __version__
from task_vector_opt.outputs.result import RunResult
from task_vector_opt.outputs.search_text import search_sentence
from task_vector_opt.run_config import RunConfig
from task_vector_opt.search.scale_first import is_scale_name
from task_vector_opt.search.study import redact


def recipe(config: RunConfig, result: RunResult, n_tensors: int) -> dict[str, Any]:
    """merge_recipe.json: enough to understand and reproduce the merge."""
    inputs = config.recipe_inputs()
    return {
        "tool": f"task_vector_opt {__version__}",
        "formula": formula(config),
        "inputs": inputs,
        **({"search": how} if (how := search_sentence(inputs)) else {}),
        "study": {"name": config.study_name, "storage": redact(config.storage), "n_trials": config.n_trials},
        "best": {"trial": result.best_trial, "score": result.best_value},
        "baselines_search_score": result.search_baselines,
        "holdout_score": result.holdout,
        **({"holdout_score_per_task": result.holdout_parts} if result.holdout_parts else {}),
        "holdout_verdict": result.verdict,
        "items_scored": result.items_scored,
        "tensors": n_tensors,
        **search_parameters(config, result),
        "weights": result.best_weights,
    }


def search_parameters(config: RunConfig, result: RunResult) -> dict[str, Any]:
    """What the sampler proposed for the best trial, where it is not the weights themselves: the scales and the
    shape's offsets of --scale_search, or the knot weights of profile mode."""
    if config.scale_first:
        scales = {k: v for k, v in result.best_params.items() if is_scale_name(k)}
        offsets = {k: v for k, v in result.best_params.items() if k not in scales and not k.startswith("density/")}
        return {"scale_search": {"scales": scales, "offsets": offsets,
                                 "rule": "weight = clip(scale of its vector + offset, weight_min, weight_max)"}}
    if config.optimize_mode == "profile":
        return {"profile_knots": {k: v for k, v in result.best_params.items() if k.startswith("knot_")}}
    return {}


def formula(config: RunConfig) -> str:
    """The merge in one line, as the recipe and the model card state it."""
    merge = config.merge
    n_vectors = len(config.tuned_models) or 1
    if n_vectors == 1 and (merge is None or not (merge.sparsifies or merge.normalize)):
        return "target + weight * (tuned - base)"
    sparsified = "" if merge is None or not merge.sparsifies else f"{merge.method} sparsified, "
    return (f"target + sum_i weight_i * S(tuned_i - base) ({sparsified}{n_vectors} vector(s)"
            + (", normalized by the sum of the weights" if merge is not None and merge.normalize else "") + ")")

