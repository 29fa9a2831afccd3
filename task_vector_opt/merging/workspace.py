"""The workspace a run's trials share, and ``prepare``, the one path that makes it: load the target, build each task
vector once (streamed), then the merger. A variant (the MoE) adds its own step through a ``Build`` subclass."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from task_vector_opt.merging.grouping import group_names
from task_vector_opt.merging.merger import HOST_RESERVE, Merger, gpu_share
from task_vector_opt.merging.methods import DENSITY_STEP, MergeSettings
from task_vector_opt.merging.models import DTYPES, load_model, resolve
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.run_config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class Workspace:
    """Everything a trial needs, loaded once per process: the live model and the merger that rewrites it."""

    model: Any
    tokenizer: Any
    merger: Merger
    group_order: list[str]  # the weights the sampler proposes, in a stable order
    n_tensors: int
    # Saves the best merge (already applied) with its merge_recipe.json and report files, and returns the folder;
    # default (None): the live model to --output_dir. The MoE saves its experts.
    save: Callable[[Any, dict[str, Any], dict[str, Any]], Path] | None = None  # (run config, recipe, report files)
    # Searched parameters besides the weights, {name: (low, high, step)}: the densities of TIES / DARE
    densities: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def baseline_fixed(self) -> dict[str, float]:
        """What the w=0 / w=1 baselines use besides the weights: the highest density searched."""
        return {name: high for name, (_low, high, _step) in self.densities.items()}


class Build:
    """The steps of ``prepare`` that depend on what the live model is; this one is a dense target's. One object per
    run: a step may keep what a later step needs."""

    store_device: str = ""  # set by vector_device

    def live_target(self, config: RunConfig) -> int:
        """Which of the run's targets is loaded (the others are only resolved)."""
        return 0

    def vector_device(self, config: RunConfig, target_dirs: list[Path], model, tokenizer) -> str:
        """Where the task vectors live (the dense merger keeps the target's originals there too)."""
        self.store_device = choose_store_device(config, sum(p.numel() * p.element_size() for p in model.parameters()))
        return self.store_device

    def merger(self, config: RunConfig, model, tokenizer, vectors: list[dict]):
        return Merger(model, vectors, group_names(list(vectors[0]), config.optimize_mode), self.store_device,
                      config.merge)

    def workspace(self, model, tokenizer, merger, densities: dict[str, tuple[float, float, float]]) -> Workspace:
        return Workspace(model, tokenizer, merger, merger.weight_names(), len(merger.vectors[0]), densities=densities)

    def log_line(self, merger) -> tuple[str, str]:
        """(what was made, where its copies are) for the log line after ``prepare``."""
        return "loaded", f"copies on {self.store_device}"


def prepare(config: RunConfig, build: Build | None = None) -> Workspace:
    """Resolve the models, load the live target, build each task vector tuned_i - base (streamed) and the merger."""
    build = build or Build()
    started = time.perf_counter()
    target_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.targets]
    base_dir = resolve(config.base, config.cache_dir, config.allow_pickle)
    tuned_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.tuned_models or [config.tuned]]
    live = build.live_target(config)
    model, tokenizer = load_model(target_dirs[live], config.dtype, config.device, config.trust_remote_code,
                                  config.allow_pickle, config.targets[live].flag)
    vector_device = build.vector_device(config, target_dirs, model, tokenizer)
    vectors = [build_task_vector(model, base_dir, tuned_dir, dtype=DTYPES[config.dtype], store_device=vector_device,
                                 skip_embed=config.skip_embed) for tuned_dir in tuned_dirs]
    merger = build.merger(config, model, tokenizer, vectors)
    workspace = build.workspace(model, tokenizer, merger, density_ranges(merger))
    made, where = build.log_line(merger)
    log.info("%s in %.1fs: %d tensors, %d vector(s), %d weights + %d densities (%s mode, %s), %s (%.2f GiB)", made,
             time.perf_counter() - started, workspace.n_tensors, len(vectors), len(workspace.group_order),
             len(workspace.densities), config.optimize_mode, merger.settings.method, where,
             merger.stored_bytes() / 2**30)
    return workspace


def density_ranges(merger) -> dict[str, tuple[float, float, float]]:
    """{density parameter: (low, high, step)} of a sparsifying merge; empty under task arithmetic."""
    settings: MergeSettings = merger.settings
    return {name: (settings.density_min, settings.density_max, DENSITY_STEP) for name in merger.density_names()}


def choose_store_device(config: RunConfig, model_bytes: int) -> str:
    """Where the target copy and the task vectors live (see docs/en/hardware.md)."""
    if config.vector_placement == "cpu":
        return "cpu"
    if config.vector_placement == "device" or not config.device.startswith("cuda"):
        return config.device
    copies = 1 + max(len(config.tuned_models), 1)  # the target's originals and one copy per task vector
    free, total = torch.cuda.mem_get_info(torch.device(config.device))
    free -= gpu_share(config.evaluator) * total  # --generation_backend vllm: the engine's share, taken later
    fits = free > (copies + HOST_RESERVE) * model_bytes
    log.info("vector placement auto: %.1f GiB free on %s, copies need %.1f GiB -> %s", free / 2**30, config.device,
             copies * model_bytes / 2**30, "device" if fits else "cpu")
    return config.device if fits else "cpu"
