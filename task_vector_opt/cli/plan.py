"""The --dry_run plan of a dense (or VLM) target: weights, tensors and memory, from config files only.
(The MoE's plan is merging.moe.plan.)"""
from __future__ import annotations

import json

import torch

from task_vector_opt.errors import UsageError
from task_vector_opt.merging.grouping import group_names, ordered_groups
from task_vector_opt.merging.models import DTYPES, auto_class_for, resolve_config
from task_vector_opt.merging.vlm import memory_plan, name_map_for
from task_vector_opt.run_config import RunConfig
from task_vector_opt.search.scale_first import planned_space
from task_vector_opt.search.study import redact


def dry_run_plan(config: RunConfig, evaluator_line: str) -> str:
    """The plan, from config files only: no weights are read. A hub model's config.json is fetched alone, which also
    checks early that every model can be reached."""
    from transformers import AutoConfig

    config_dirs = [resolve_config(source, config.cache_dir) for source in (*config.targets, config.base, config.tuned)]
    model_config = AutoConfig.from_pretrained(config_dirs[0], trust_remote_code=config.trust_remote_code)
    with torch.device("meta"):
        skeleton = auto_class_for(model_config).from_config(model_config, trust_remote_code=config.trust_remote_code)
    to_checkpoint = name_map_for(skeleton)  # a VLM: its language model's tensors only
    names = [n for n, _ in skeleton.named_parameters() if to_checkpoint(n) is not None]
    groups = ordered_groups(group_names(names, config.optimize_mode))
    n_vectors = len(config.tuned_models) or 1
    try:
        n_weights = len(planned_space(groups, n_vectors, config.optimize_mode, config.profile_knots,
                                      config.scale_first, config.weight_min, config.weight_max).params)
    except ValueError as exc:
        raise UsageError("--profile_knots", str(exc).split(": ", 1)[-1]) from None
    merge = config.merge
    n_densities = 0 if merge is None or not merge.sparsifies else n_vectors * (len(groups) if merge.density_per_group
                                                                               else 1)
    itemsize = DTYPES[config.dtype].itemsize
    parameters = dict(skeleton.named_parameters())
    on_device = config.vector_placement != "cpu" and config.device != "cpu"
    memory = memory_plan(sum(p.numel() for p in parameters.values()) * itemsize,
                         sum(parameters[n].numel() for n in names) * itemsize, on_device, n_vectors)
    return json.dumps({
        "study": config.study_name, "storage": redact(config.storage), "run_dir": str(config.run_dir),
        "optimize_mode": config.optimize_mode, "scale_search": "on" if config.scale_first else "off",
        "weights": n_weights, "tensors": len(names),
        "task_vectors": n_vectors, "merge_method": merge.method if merge is not None else "task_arithmetic",
        "densities": n_densities,
        "sampler": config.sampler, "n_trials": config.n_trials,
        "memory_estimate_gib": {config.device: round(memory.device_bytes / 2**30, 2),
                                **({} if on_device else
                                   {"cpu (target copy + task vectors)": round(memory.host_bytes / 2**30, 2)})},
        "evaluator": evaluator_line, "output_dir": str(config.output_dir),
    }, indent=2)
