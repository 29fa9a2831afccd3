"""mergekit_config.yml: the same merge as a mergekit ``task_arithmetic`` config, where mergekit can express it.

mergekit's task_arithmetic computes ``base + sum_i weight_i * (model_i - base)`` (normalize off by default).
With the target at weight 1 and tuned at weight w this is ``target + w * (tuned - base)``. Per-group weights
become mergekit's conditional parameters: a list of ``{filter, value}`` where the first filter that is a
substring of the tensor name wins, and a last entry without filter covers every other tensor.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

HEADER = """\
# mergekit config reproducing this merge: target + w * (tuned - base), with the optimized weights.
# Written by task_vector_opt. Run:  mergekit-yaml mergekit_config.yml ./merged-model
# task_arithmetic computes base + sum_i weight_i * (model_i - base); the target at weight 1 and tuned at
# weight w give target + w * (tuned - base). Each weight filter below matches the tensors of one group
# (first matching filter wins); the last entry (no filter) covers the tensors the search left unchanged.
# mergekit copies the base model's tokenizer; this tool saved the target's (identical when they share it).
# Same formula, other order of floating-point operations: values agree to rounding, not bit for bit.
"""


@dataclass
class MergeLayout:
    """What the export needs from the live merge: every tensor name, each merged tensor's group, and
    the tensors merged on part of their rows only (vocabulary mismatch)."""

    all_tensors: list[str]
    groups: dict[str, str]  # merged tensor name -> group (Optuna parameter name)
    partial_rows: dict[str, int] = field(default_factory=dict)
    vision_language: bool = False  # the target is a VLM: mergekit would need an LLM of base/tuned's layout


def layout_from_merger(model, merger) -> MergeLayout | None:
    """The layout of a plain Merger over a Hugging Face model; None for anything else (e.g. an in-memory MoE)."""
    from task_vector_opt.merging.merger import Merger

    if not isinstance(merger, Merger):
        return None
    vector = merger.vector
    partial = {name: entry.rows for name, entry in vector.items() if entry.rows is not None}
    from task_vector_opt.merging.models import is_vlm

    return MergeLayout([name for name, _ in model.named_parameters()], {n: merger.groups[n] for n in vector}, partial,
                       vision_language=is_vlm(model))


def _isolates(pattern: str, members: set[str], all_tensors: list[str]) -> bool:
    return {name for name in all_tensors if pattern in name} == members


def group_filters(layout: MergeLayout) -> list[tuple[str, str]]:
    """(filter, group) pairs such that, first match wins, every merged tensor gets its own group's weight and
    no other tensor matches. One filter per group where a common substring isolates it, else one per tensor."""
    members: dict[str, list[str]] = {}
    for name, group in layout.groups.items():
        members.setdefault(group, []).append(name)
    filters: list[tuple[str, str]] = []
    for group, names in members.items():
        wanted = set(names)
        prefix = os.path.commonprefix(names)
        prefix = prefix[: prefix.rfind(".") + 1] if len(names) > 1 else prefix
        module = group.split(".", 1)[1] if group.startswith("layer_") and "." in group else group
        candidates = [c for c in (prefix, f".{module}.", f"{module}.") if c]
        pattern = next((c for c in candidates if _isolates(c, wanted, layout.all_tensors)), None)
        filters.extend([(pattern, group)] if pattern else [(name, group) for name in names])
    return filters


def tuned_models(inputs: dict[str, Any]) -> list[str]:
    """Every tuned model of the recipe inputs (one string before several vectors existed, a list with several)."""
    tuned = inputs.get("tuned_model")
    return list(tuned) if isinstance(tuned, (list, tuple)) else [tuned]


def merge_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The merge method settings of the recipe inputs; plain task arithmetic when absent."""
    return inputs.get("merge") or {"merge_method": "task_arithmetic", "normalize": False}


def _target(inputs: dict[str, Any]) -> str | None:
    return inputs["targets"][0] if isinstance(inputs.get("targets"), list) else inputs.get("target_model")


def reasons_not_expressible(layout: MergeLayout | None, inputs: dict[str, Any] | None = None) -> list[str]:
    if inputs is not None and _target(inputs) != inputs.get("base_model"):
        merge = merge_inputs(inputs)
        if merge["merge_method"] in ("ties", "dare_ties"):
            return [f"{merge['merge_method']} with a target other than the base: mergekit would take the target "
                    "as one more model (target - base) and let its delta vote in the sign election, while this "
                    "tool adds the vectors to the target untouched"]
        if merge.get("normalize"):
            return ["normalize with a target other than the base: mergekit would count the target's weight in "
                    "the divisor, while this tool divides the vectors' sum only"]
    if layout is None:
        return ["this merge is not a single task vector over one Hugging Face model (e.g. an in-memory MoE), "
                "which mergekit's task_arithmetic cannot describe"]
    reasons = []
    if layout.vision_language:
        reasons.append("the target is a vision-language model whose tensor names differ from base/tuned's; "
                       "mergekit's task_arithmetic merges models of one layout only")
    for name, rows in layout.partial_rows.items():
        reasons.append(f"{name}: the target has a larger vocabulary than base/tuned and the vector was added to "
                       f"its first {rows} rows only; mergekit needs equal shapes (or merges embeddings through "
                       "tokenizer_source, which is a different formula)")
    return reasons


def mergekit_config(inputs: dict[str, Any], weights: dict[str, float], layout: MergeLayout | None) -> str:
    """The YAML text: a runnable config, or, where mergekit cannot express the merge, comments that say why."""
    reasons = reasons_not_expressible(layout, inputs)
    if reasons:
        lines = ["# mergekit cannot reproduce this merge exactly, so no config is given:"]
        lines += [f"#  - {r}" for r in reasons]
        lines += ["# Use merge_recipe.json (the weights per group) with task_vector_opt instead."]
        return "\n".join(lines) + "\n"
    assert layout is not None
    if len(tuned_models(inputs)) > 1 or "merge" in inputs:
        return _methods_config(inputs, weights, layout)
    tuned_weight: list[dict[str, Any]] = [{"filter": pattern, "value": float(weights[group])}
                                          for pattern, group in group_filters(layout)]
    tuned_weight.append({"value": 0.0})  # tensors outside the task vector (e.g. --skip_embed) stay the target's
    target = inputs["targets"][0] if isinstance(inputs.get("targets"), list) else inputs.get("target_model")
    models: list[dict[str, Any]] = []
    if target != inputs["base_model"]:
        models.append({"model": target, "parameters": {"weight": 1.0}})
    models.append({"model": inputs["tuned_model"], "parameters": {"weight": tuned_weight}})
    config = {
        "merge_method": "task_arithmetic",
        "base_model": inputs["base_model"],
        "models": models,
        "parameters": {"normalize": False, "lambda": 1.0},
        "dtype": inputs.get("dtype", "bfloat16"),
    }
    return HEADER + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)


METHODS_HEADER = """\
# mergekit config reproducing this merge: target + sum_i w_i * S(tuned_i - base), with the optimized weights
# and densities. Written by task_vector_opt. Run:  mergekit-yaml mergekit_config.yml ./merged-model
# Each filter below matches the tensors of one group (first matching filter wins); the last entry (no filter)
# covers the tensors the search left unchanged. Weights and densities are per tuned model, as searched.
# Same formula, other order of floating-point operations: values agree to rounding, not bit for bit.
"""


def _per_group(layout: MergeLayout, value_of: Any, default: float) -> list[dict[str, Any]] | float:
    """mergekit conditional parameter: one {filter, value} per group, a catch-all ``default`` last."""
    entries: list[dict[str, Any]] = [{"filter": pattern, "value": float(value_of(group))}
                                     for pattern, group in group_filters(layout)]
    return entries + [{"value": default}]


def _methods_config(inputs: dict[str, Any], params: dict[str, float], layout: MergeLayout) -> str:
    """Several vectors and / or TIES / DARE: mergekit's method of the same name, weights and densities per model."""
    from task_vector_opt.merging.methods import ParamNames, snap_density

    merge = merge_inputs(inputs)
    method = merge["merge_method"]
    tuned = tuned_models(inputs)
    names = ParamNames(len(tuned), method != "task_arithmetic", bool(merge.get("density_per_group")))
    notes: list[str] = []
    models: list[dict[str, Any]] = []
    target = _target(inputs)
    if target != inputs["base_model"]:  # only reached where mergekit's formula keeps the target's delta whole
        models.append({"model": target, "parameters": {"weight": 1.0, "density": 1.0}})
    for i, model in enumerate(tuned):
        parameters: dict[str, Any] = {"weight": _per_group(layout, lambda g: params[names.weight(i, g)], 0.0)}
        if names.sparsifies:
            if names.per_group:
                parameters["density"] = _per_group(layout, lambda g: snap_density(params[names.density(i, g)]),
                                                   1.0)
            else:
                parameters["density"] = snap_density(params[names.density(i, "")])
        models.append({"model": model, "parameters": parameters})
    shared: dict[str, Any] = {"normalize": bool(merge.get("normalize")), "lambda": 1.0}
    if method in ("dare_linear", "dare_ties"):
        rescale = merge.get("dare_rescale", "inverse_density")
        shared["rescale"] = rescale != "none"
        notes.append(f"DARE masks: this tool drew them from --dare_seed {merge.get('dare_seed')}; mergekit draws its "
                     "own, so the entries kept differ and so do the values (same formula, other masks).")
        if rescale == "inverse_density":
            notes.append("rescale: this tool divided the kept entries by the density (the DARE paper); mergekit's "
                         "rescale restores each vector's L1 norm instead, which is close but not equal.")
    if method == "ties":
        shared["rescale"] = False  # this tool does not rescale trimmed vectors; mergekit would by default here
    config = {"merge_method": method, "base_model": inputs["base_model"], "models": models,
              "parameters": shared, "dtype": inputs.get("dtype", "bfloat16")}
    text = METHODS_HEADER + "".join(f"# Note: {note}\n" for note in notes)
    return text + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=120)
