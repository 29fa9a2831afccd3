"""One MoE run's workspace: the dense ``prepare`` (merging.workspace) with the MoE's step added: the MoE is built in
memory around the loaded base expert, and its merger writes each expert's slices and refreshes the routers."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from task_vector_opt.merging.models import DTYPES
from task_vector_opt.merging.moe.build import InMemoryMoE
from task_vector_opt.merging.moe.config import MoESettings
from task_vector_opt.merging.moe.layout import mlp_location, moe_groups
from task_vector_opt.merging.moe.merger import make_merger
from task_vector_opt.merging.moe.placement import choose_moe_placement
from task_vector_opt.merging.moe.routers import router_vectors
from task_vector_opt.merging.moe.save import save_outputs
from task_vector_opt.merging.workspace import Build, Workspace
from task_vector_opt.merging.workspace import prepare as prepare_workspace


@dataclass
class MoEWorkspace(Workspace):
    moe: InMemoryMoE | None = None
    expert_dirs: list[Path] | None = None


class MoEBuild(Build):
    """The MoE's steps of ``prepare``: load the MoE base expert, build the MoE around it, place the targets'
    originals and the task vectors, and make the per-trial writer."""

    def __init__(self, settings: MoESettings):
        self.settings = settings

    def live_target(self, config) -> int:
        return self.settings.base_index

    def vector_device(self, config, target_dirs: list[Path], model, tokenizer) -> str:
        settings = self.settings
        self.expert_dirs = target_dirs
        self.moe = InMemoryMoE(model, target_dirs, settings.base_index, settings.experts_per_token,
                               [t.flag for t in config.targets])
        itemsize = DTYPES[config.dtype].itemsize
        dense_bytes = sum(p.numel() for p in model.parameters()) * itemsize
        mlp_bytes = sum(p.numel() for n, p in model.named_parameters() if mlp_location(n)) * itemsize
        moe_bytes = sum(p.numel() for p in self.moe.model.parameters()) * itemsize
        origin_bytes = dense_bytes + (settings.n_experts - 1) * mlp_bytes
        self.origin_device, self.store_device = choose_moe_placement(
            config, moe_bytes, origin_bytes, len(config.tuned_models or [config.tuned]) * dense_bytes)
        return self.store_device

    def merger(self, config, model, tokenizer, vectors: list[dict]):
        groups = moe_groups([n for n, _ in model.named_parameters()], self.settings.n_experts,
                            self.settings.base_index, config.optimize_mode)
        merger = make_merger(self.moe, vectors, groups, self.origin_device, self.settings, tokenizer, config.merge)
        self.moe.set_routers(router_vectors(self.settings, model, tokenizer))
        return merger

    def workspace(self, model, tokenizer, merger, densities) -> MoEWorkspace:
        moe, expert_dirs = self.moe, self.expert_dirs
        workspace = MoEWorkspace(moe.model, tokenizer, merger, merger.weight_names(), len(merger.slots),
                                 densities=densities, moe=moe, expert_dirs=expert_dirs)
        workspace.save = lambda cfg, merge_recipe, report_files: save_outputs(
            cfg, merge_recipe, moe, expert_dirs, workspace.tokenizer, report_files)
        return workspace

    def log_line(self, merger) -> tuple[str, str]:
        return (f"MoE of {self.settings.n_experts} experts built",
                f"gate {self.settings.gate_mode}, originals on {self.origin_device}, task vectors on {self.store_device}")


def prepare(config) -> MoEWorkspace:
    """The MoE's workspace from the run config (``config``: the engine's RunConfig, whose ``extra["moe"]`` holds the
    MoE's settings)."""
    return prepare_workspace(config, MoEBuild(config.extra["moe"]))
