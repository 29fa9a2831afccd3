"""The files saved beside the merged model at the end of a run: report, plots, model card, mergekit config.

They go into the same atomic save as the model (models.save_model), so a crash never leaves them half written.
A report that cannot be drawn costs a warning, never the model: `python -m task_vector_opt.outputs.report` redraws it.
"""
from __future__ import annotations

import logging
from typing import Any

import optuna

log = logging.getLogger(__name__)

MERGEKIT_YAML = "mergekit_config.yml"
MODEL_CARD = "README.md"


def run_outputs(study: optuna.Study, holdout: dict[str, float], recipe: dict[str, Any], model: Any,
                merger: Any) -> dict[str, str | bytes]:
    """{file name: content} for the output directory, besides the model and merge_recipe.json."""
    from task_vector_opt.outputs.mergekit_export import layout_from_merger, mergekit_config, reasons_not_expressible

    study.set_user_attr("holdout", holdout)  # kept in the study, so a later `report` shows it too
    files: dict[str, str | bytes] = {}
    mergekit_ok = False
    try:
        layout = layout_from_merger(model, merger)
        files[MERGEKIT_YAML] = mergekit_config(recipe["inputs"], recipe["weights"], layout)
        mergekit_ok = not reasons_not_expressible(layout, recipe["inputs"])
    except Exception as exc:  # an export problem must not cost the user the merged model
        log.warning("mergekit config not written (%s: %s)", type(exc).__name__, exc)
    try:
        from task_vector_opt.outputs.model_card import render_model_card
        from task_vector_opt.outputs.report import report_files, study_view

        files.update(report_files(study))
        files[MODEL_CARD] = render_model_card(study_view(study), recipe, mergekit_ok)
    except Exception as exc:  # plotting libraries missing or a plot failing: keep the model and say how to redo it
        log.warning("report / model card not written (%s: %s); redraw later with: python -m task_vector_opt.outputs.report "
                    "--storage %s --study_name %s --output_dir DIR", type(exc).__name__, exc,
                    recipe["study"]["storage"], study.study_name)
    return files
