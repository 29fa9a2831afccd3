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
    from task_vector_opt.merging.vlm import is_vlm

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


def reasons_not_expressible(layout: MergeLayout | None) -> list[str]:
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
    reasons = reasons_not_expressible(layout)
    if reasons:
        lines = ["# mergekit cannot reproduce this merge exactly, so no config is given:"]
        lines += [f"#  - {r}" for r in reasons]
        lines += ["# Use merge_recipe.json (the weights per group) with task_vector_opt instead."]
        return "\n".join(lines) + "\n"
    assert layout is not None
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
