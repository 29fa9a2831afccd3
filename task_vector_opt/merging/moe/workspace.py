"""One MoE run's workspace: resolve the experts, build the MoE, each task vector once and the per-trial writer."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from task_vector_opt.merging.methods import DENSITY_STEP, MergeSettings
from task_vector_opt.merging.models import DTYPES, load_model, resolve
from task_vector_opt.merging.moe.build import InMemoryMoE
from task_vector_opt.merging.moe.config import MoESettings
from task_vector_opt.merging.moe.layout import mlp_location, moe_groups
from task_vector_opt.merging.moe.merger import make_merger
from task_vector_opt.merging.moe.placement import choose_moe_placement
from task_vector_opt.merging.moe.routers import router_vectors
from task_vector_opt.merging.moe.save import save_outputs
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.merging.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class MoEWorkspace(Workspace):
    moe: InMemoryMoE | None = None
    expert_dirs: list[Path] | None = None


def prepare(config) -> MoEWorkspace:
    """Load the MoE base expert, build the MoE around it, the task vector once, and the per-trial writer, from
    the run config (``config``: the engine's RunConfig, whose ``extra["moe"]`` holds the MoE's settings)."""
    settings: MoESettings = config.extra["moe"]
    started = time.perf_counter()
    expert_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.targets]
    base_dir = resolve(config.base, config.cache_dir, config.allow_pickle)
    tuned_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.tuned_models or [config.tuned]]
    dense, tokenizer = load_model(expert_dirs[settings.base_index], config.dtype, config.device,
                                  config.trust_remote_code, config.allow_pickle,
                                  config.targets[settings.base_index].flag)
    moe = InMemoryMoE(dense, expert_dirs, settings.base_index, settings.experts_per_token,
                      [t.flag for t in config.targets])
    itemsize = DTYPES[config.dtype].itemsize
    dense_names = [n for n, _ in dense.named_parameters()]
    dense_bytes = sum(p.numel() for p in dense.parameters()) * itemsize
    mlp_bytes = sum(p.numel() for n, p in dense.named_parameters() if mlp_location(n)) * itemsize
    moe_bytes = sum(p.numel() for p in moe.model.parameters()) * itemsize
    origin_bytes = dense_bytes + (settings.n_experts - 1) * mlp_bytes
    origin_device, vector_device = choose_moe_placement(config, moe_bytes, origin_bytes,
                                                        len(tuned_dirs) * dense_bytes)
    vectors = [build_task_vector(dense, base_dir, tuned_dir, dtype=DTYPES[config.dtype], store_device=vector_device,
                                 skip_embed=config.skip_embed) for tuned_dir in tuned_dirs]
    merge = config.merge or MergeSettings()
    groups = moe_groups(dense_names, settings.n_experts, settings.base_index, config.optimize_mode)
    merger = make_merger(moe, vectors, groups, origin_device, settings, tokenizer, merge)
    moe.set_routers(router_vectors(settings, dense, tokenizer))
    group_order = merger.weight_names()
    densities = {name: (merge.density_min, merge.density_max, DENSITY_STEP)
                 for name in merger.density_names()}
    log.info("MoE of %d experts built in %.1fs: %d tensors, %d vector(s), %d weights + %d densities (%s mode, %s), "
             "gate %s, originals on %s, task vectors on %s (%.2f GiB)", settings.n_experts,
             time.perf_counter() - started, len(merger.slots), len(vectors), len(group_order), len(densities),
             config.optimize_mode, merger.settings.method, settings.gate_mode, origin_device, vector_device,
             merger.stored_bytes() / 2**30)
    workspace = MoEWorkspace(moe.model, tokenizer, merger, group_order, len(merger.slots), densities=densities,
                             moe=moe, expert_dirs=expert_dirs)
    workspace.save = lambda cfg, merge_recipe, report_files: save_outputs(
        cfg, merge_recipe, moe, expert_dirs, workspace.tokenizer, report_files)
    return workspace

