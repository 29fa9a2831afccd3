"""README.md of the saved model: a Hugging Face model card (YAML metadata + sources, method, weights, scores,
plots and how to reproduce the merge)."""
from __future__ import annotations

from typing import Any

import yaml
from huggingface_hub import ModelCardData

from task_vector_opt.outputs.search_text import search_flags, search_sentence
from task_vector_opt.sources import is_hub_id
from task_vector_opt.outputs.report import HISTORY_PNG, REPORT_HTML, WEIGHTS_PNG, StudyView, part_names, score_rows

TAGS = ["merge", "task-vector", "chat-vector", "task_vector_opt"]


def card_data(inputs: dict[str, Any]) -> ModelCardData:
    """The card's YAML metadata, as huggingface_hub declares it; hub sources form the hub's "merge" relation."""
    targets = inputs.get("targets") or []
    sources = [*targets, *tuned_list(inputs), inputs.get("base_model")]
    # org/name only: a bare name is a valid repo id but far more often a local directory that has since moved
    hub_sources = list(dict.fromkeys(s for s in sources if isinstance(s, str) and is_hub_id(s) and "/" in s))
    merge = {"base_model": hub_sources, "base_model_relation": "merge"} if hub_sources else {}
    return ModelCardData(**merge, library_name="transformers", pipeline_tag="text-generation", tags=TAGS)


def tuned_list(inputs: dict[str, Any]) -> list[str]:
    """Every tuned model (a string with one, a list with several)."""
    tuned = inputs.get("tuned_model")
    return [str(t) for t in tuned] if isinstance(tuned, (list, tuple)) else [tuned] if tuned else []


def merge_flags(inputs: dict[str, Any]) -> list[str]:
    """The merge-method flags that reproduce ``inputs["merge"]`` (none for one plain vector)."""
    merge = inputs.get("merge") or {}
    flags = []
    if merge.get("merge_method", "task_arithmetic") != "task_arithmetic":
        flags.append(f"--merge_method {merge['merge_method']}")
        flags.append(f"--density_min {merge.get('density_min')} --density_max {merge.get('density_max')}")
    if merge.get("density_per_group"):
        flags.append("--density_per_group")
    if merge.get("dare_seed") is not None:
        flags.append(f"--dare_seed {merge['dare_seed']} --dare_rescale {merge.get('dare_rescale')}")
    if merge.get("normalize"):
        flags.append("--merge_normalize")
    return flags


def metadata(inputs: dict[str, Any]) -> dict[str, Any]:
    return card_data(inputs).to_dict()


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "—" if value is None else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def reproduce_command(inputs: dict[str, Any], study_name: str, storage: str) -> str:
    pipeline = inputs.get("pipeline", "jglue")
    targets = inputs.get("targets") or ["TARGET"]
    if pipeline.startswith("mt_bench_moe_"):  # merge_task_vector_mt_bench_moe_N_experts.py, --target_model_i
        script = f"merge_task_vector_{pipeline}_experts.py"
        target_flags = [f"--target_model_{i} {t}" for i, t in enumerate(targets, 1)]
    else:
        script = f"merge_task_vector_{pipeline}.py"
        target_flags = [f"--target_model {targets[0]}"]
    parts = [f"python {script}", *target_flags,
             f"--base_model {inputs.get('base_model')}", f"--tuned_model {','.join(tuned_list(inputs))}",
             *merge_flags(inputs),
             f"--optimize_mode {inputs.get('optimize_mode')}", *search_flags(inputs),
             f"--optuna_sampler {inputs.get('optuna_sampler')}",
             f"--optuna_seed {inputs.get('optuna_seed')}", f"--weight_min {inputs.get('weight_min')}",
             f"--weight_max {inputs.get('weight_max')}", f"--dtype {inputs.get('dtype')}",
             f"--study_name {study_name}", f"--storage {storage}"]
    if inputs.get("profile_knots"):
        parts.append(f"--profile_knots {inputs['profile_knots']}")
    if inputs.get("skip_embed"):
        parts.append("--skip_embed")
    parts.append("--finalize")
    return " \\\n    ".join(parts)


def verdict_lines(recipe: dict[str, Any]) -> str:
    """The held-out verdict in words (paired over items, 95% bootstrap interval), or nothing without holdout."""
    sentences = (recipe.get("holdout_verdict") or {}).get("sentences") or []
    return "".join(f"\n- Verdict: {sentence}." for sentence in sentences) + ("\n" if sentences else "")


def render_model_card(view: StudyView, recipe: dict[str, Any], mergekit_ok: bool) -> str:
    inputs = recipe.get("inputs", {})
    study = recipe.get("study", {})
    meta = card_data(inputs).to_yaml()
    sources = [["target (receives the vector)", ", ".join(inputs.get("targets") or [])],
               ["base (subtracted)", inputs.get("base_model")]]
    tuned = tuned_list(inputs)
    sources += [[f"tuned {i} (added, vector v{i})" if len(tuned) > 1 else "tuned (added)", model]
                for i, model in enumerate(tuned, 1)]
    merge = inputs.get("merge") or {"merge_method": "task_arithmetic"}
    scores = [list(row) for row in score_rows(view)]  # merge, search, held-out, then each task's held-out
    weights = [[group, w] for group, w in recipe.get("weights", view.best_weights).items()]
    evaluator = inputs.get("evaluator")
    mergekit_text = (
        "- **With mergekit**: `mergekit-yaml mergekit_config.yml ./merged-model` (the same formula as a "
        f"`{merge['merge_method']}` config; values agree to floating-point rounding"
        + ("; DARE's random masks are mergekit's own, see the config's notes)." if "dare" in merge["merge_method"]
           else ").") if mergekit_ok else
        "- **With mergekit**: not possible for this merge; `mergekit_config.yml` says why.")
    return f"""---
{meta}
---

# Task vector merge: {view.name}

This model is `{recipe.get('formula', 'target + w * (tuned - base)')}`: {len(tuned)} task vector(s) ("chat vector")
added to the target with one weight per vector and {inputs.get('optimize_mode', '')} group{densities_text(merge)},
the weights found by Optuna
({inputs.get('optuna_sampler', '')}, seed {inputs.get('optuna_seed', '')}, {len(view.values)} completed trials,
range [{inputs.get('weight_min', '')}, {inputs.get('weight_max', '')}]). Made with task_vector_opt
({recipe.get('tool', '')}).

## Sources

{_md_table(["role", "model"], sources)}

## Method

- Formula: `{recipe.get('formula', 'target + weight * (tuned - base)')}`, computed in {inputs.get('dtype', '')}
  on {recipe.get('tensors', '?')} tensors{' (embed_tokens / lm_head left unchanged)' if inputs.get('skip_embed') else ''}.
- Search: {inputs.get('pipeline', '')} pipeline, optimize mode `{inputs.get('optimize_mode', '')}`{_search_clause(inputs)}; the first two trials
  are the baselines w=1 everywhere (plain task-vector addition) and w=0 everywhere (the target unchanged).
- Evaluator settings: `{yaml.safe_dump(evaluator, default_flow_style=True, width=10_000).strip() if evaluator else 'n/a'}`

## Scores

Search score: the objective the weights were optimized on. Held-out score: items the search never saw
(empty when the run had no holdout).

{_md_table(["merge", "search score", "held-out score", *(f"held-out {name}" for name in part_names(view))], scores)}
{verdict_lines(recipe)}
![Optimization history]({HISTORY_PNG})

![Best weights]({WEIGHTS_PNG})

The interactive report (history, weights, parameter importances, parallel coordinates) is
[`{REPORT_HTML}`]({REPORT_HTML}); it opens offline in any browser.

## Weights (best trial {view.best_number})

Names: `group` with one vector, `vN/group` for vector N with several; `density/vN[/group]` is the share of vector
N's entries kept by {merge['merge_method']}.

{_md_table(["parameter", "value"], weights)}

## How to reproduce

- **With task_vector_opt**: with `--finalize`, the search command saves the best merge of the stored study
  again without searching (add the same evaluator flags for the holdout; they are recorded in
  `merge_recipe.json`):

  ```bash
  {reproduce_command(inputs, study.get('name', view.name), study.get('storage', 'STORAGE'))}
  ```
{mergekit_text}
- **By hand**: `merge_recipe.json` holds every weight under its group name and the inputs.
"""


def densities_text(merge: dict[str, Any]) -> str:
    if merge.get("merge_method", "task_arithmetic") == "task_arithmetic":
        return ""
    per = "vector and group" if merge.get("density_per_group") else "vector"
    return (f", merged by {merge['merge_method']} with one density per {per} searched in "
            f"[{merge.get('density_min')}, {merge.get('density_max')}]")


def _search_clause(inputs: dict) -> str:
    sentence = search_sentence(inputs)
    return f", {sentence}" if sentence else ""
