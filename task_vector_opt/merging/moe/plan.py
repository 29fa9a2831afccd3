"""The MoE's --dry_run plan: weights per expert and vector, densities, tensors and memory, from config files only."""
from __future__ import annotations

import json
from typing import Callable

import torch

from task_vector_opt.merging.grouping import ordered_groups
from task_vector_opt.merging.methods import MergeSettings
from task_vector_opt.merging.models import DTYPES, resolve_config
from task_vector_opt.merging.moe.config import MoESettings, expert_output_dir
from task_vector_opt.merging.moe.layout import expert_label, mlp_location, moe_groups
from task_vector_opt.merging.task_vector import embedding_parameter_names


def dry_run_plan(config, evaluator_line: str, searched: Callable[[list[str], int], list[str]]) -> str:
    """The MoE plan from config files only: weights per expert, tensors, memory; no weights are read.
    ``searched(groups, n_vectors)``: the parameters the search proposes over these groups (the search stage's rule)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings: MoESettings = config.extra["moe"]
    config_dirs = [resolve_config(source, config.cache_dir)  # config.json alone; checks every model can be reached
                   for source in (*config.targets, config.base, *(config.tuned_models or [config.tuned]))]
    model_config = AutoConfig.from_pretrained(config_dirs[settings.base_index],
                                              trust_remote_code=config.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.trust_remote_code)
    params = dict(skeleton.named_parameters())
    names = list(params)
    if config.skip_embed:
        names = [n for n in names if n not in embedding_parameter_names(skeleton)]
    groups = moe_groups(names, settings.n_experts, settings.base_index, config.optimize_mode)
    n_vectors = len(config.tuned_models) or 1
    merge = config.merge or MergeSettings()
    n_groups = len(ordered_groups(groups))
    n_densities = 0 if not merge.sparsifies else n_vectors * (n_groups if merge.density_per_group else 1)
    proposed = searched(ordered_groups(groups), n_vectors)
    per_expert = {expert_label(i): sum(1 for p in proposed if f"{expert_label(i)}/" in f"{p}/")
                  for i in range(settings.n_experts)}
    itemsize = DTYPES[config.dtype].itemsize
    dense = sum(p.numel() for p in params.values()) * itemsize
    mlp = sum(p.numel() for n, p in params.items() if mlp_location(n)) * itemsize
    moe = dense + (settings.n_experts - 1) * mlp
    gib = lambda b: round(b / 2**30, 2)  # noqa: E731
    return json.dumps({
        "study": config.study_name, "run_dir": str(config.run_dir), "experts": settings.n_experts,
        "moe_base_expert": settings.base_index + 1, "gate_mode": settings.gate_mode,
        "experts_per_token": settings.experts_per_token, "dtype": config.dtype, "optimize_mode": config.optimize_mode,
        "scale_search": "on" if config.scale_first else "off",
        "weights": len(proposed), "weights_per_expert": per_expert, "tensors": len(groups),
        "task_vectors": n_vectors, "merge_method": merge.method, "densities": n_densities,
        "sampler": config.sampler, "n_trials": config.n_trials,
        "memory_estimate_gib": {"moe (live)": gib(moe), "targets' originals": gib(moe), "task vectors": gib(n_vectors * dense)},
        "evaluator": evaluator_line,
        "outputs": [str(expert_output_dir(config.output_dir, i)) for i in range(settings.n_experts)]
                   + ([str(config.output_dir)] if settings.save_moe else []),
    }, indent=2)

