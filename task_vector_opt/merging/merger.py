"""Exact, in-place application of weights: param = target + sum_i w_i * S(task_vector_i), per tensor.

Every write starts from the stored original target tensor, never from the current
value, so applying weights A then B is bit-for-bit the same as applying B to a
fresh load. Tensors whose weights (and densities) did not change are not touched.
One vector under task arithmetic is one fused op per tensor; several vectors or a
sparsifying method (TIES, DARE) go through task_vector_opt.merging.methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from task_vector_opt.merging.grouping import ordered_groups
from task_vector_opt.merging.methods import (DENSITY_GRID, MergeSettings, ParamNames, Scratch, TensorSources,
                                             magnitude_thresholds, snap_density, write_combined)
from task_vector_opt.merging.task_vector import VectorEntry

if TYPE_CHECKING:
    from task_vector_opt.evaluation.protocol import EvaluatorSettings

TensorSetting = float | tuple  # one vector, task arithmetic: its weight; otherwise (weights, densities)
HOST_RESERVE = 0.25  # of a model's size, kept free for activations when placing the copies on the GPU


def gpu_share(evaluator_settings: EvaluatorSettings | None) -> float:
    """The share of the GPU's memory the evaluator's answering backend takes for itself (vLLM's
    --vllm_gpu_memory_utilization; 0 with the hf backend or no evaluator): memory placement leaves it free."""
    return 0.0 if evaluator_settings is None else float(evaluator_settings.gpu_memory_share())


@torch.no_grad()
def write_merged(live: torch.Tensor, origin: torch.Tensor, delta: torch.Tensor, weight: float) -> None:
    """live <- origin + weight * delta, the one exact write every merger makes (dense and MoE alike).

    Always computed from the stored original, so the result depends on ``weight`` alone.
    """
    if weight == 0.0:  # restore exactly (origin + 0*delta would turn -0.0 into +0.0)
        live.copy_(origin, non_blocking=True)
    elif origin.device == live.device and delta.device == live.device:
        torch.add(origin, delta, alpha=weight, out=live)
    else:  # host-resident copies: stream both to the device, then the same fused add
        live.copy_(origin, non_blocking=True)
        live.add_(delta.to(live.device, non_blocking=True), alpha=weight)


def ties_thresholds(vectors: Sequence[dict[str, VectorEntry]], settings: MergeSettings) -> dict[str, list[torch.Tensor]]:
    """TIES: per tensor and vector, the magnitude threshold at every grid density of the searched range (computed
    once per run; every merger over these vectors, dense or MoE, looks its densities up here)."""
    if settings.method != "ties":
        return {}
    from tqdm.auto import tqdm

    low, high = settings.density_min, min(settings.density_max, 1.0)
    return {name: [magnitude_thresholds(entries[name].delta, low, high) for entries in vectors]
            for name in tqdm(vectors[0], desc="TIES thresholds", unit="tensor", leave=False)}


def combined_setting(weights: dict[str, float], weight_name: Callable[[int, str], str],
                     density_name: Callable[[int, str], str | None], group: str, n_vectors: int,
                     settings: MergeSettings) -> tuple:
    """(weights per vector, snapped densities or None) of one tensor in ``group``, read under the given names."""
    per_vector = tuple(float(weights[weight_name(i, group)]) for i in range(n_vectors))
    densities = tuple(snap_density(float(weights[density_name(i, group)]))
                      for i in range(n_vectors)) if settings.sparsifies else None
    return per_vector, densities


@torch.no_grad()
def write_setting(live: torch.Tensor, name: str, origin: torch.Tensor, deltas: Sequence[torch.Tensor],
                  thresholds: Sequence[torch.Tensor] | None, setting: tuple, settings: MergeSettings,
                  scratch: Scratch) -> None:
    """live <- origin + sum_i w_i * S(delta_i) for a combined_setting; ``name`` is the dense tensor's name, which
    seeds its DARE masks (so an MoE expert slot gets the very masks of the dense merge)."""
    per_vector, densities = setting
    if not any(per_vector):
        live.copy_(origin, non_blocking=True)  # exactly (origin + 0*delta would turn -0.0 into +0.0)
        return
    sources = TensorSources(name, origin, deltas, thresholds, round(settings.density_min * DENSITY_GRID))
    write_combined(live, sources, per_vector, densities, settings, scratch)


class Merger:
    def __init__(self, model: torch.nn.Module, vector: dict[str, VectorEntry] | Sequence[dict[str, VectorEntry]],
                 groups: dict[str, str], store_device: str | torch.device, settings: MergeSettings | None = None):
        """``vector``: one task vector, or a list of them (one per tuned model) over the same tensors."""
        self.vectors: list[dict[str, VectorEntry]] = [vector] if isinstance(vector, dict) else list(vector)
        self.vector = self.vectors[0]
        self.settings = settings or MergeSettings()
        for index, other in enumerate(self.vectors[1:], 2):
            if other.keys() != self.vector.keys() or any(other[n].rows != e.rows for n, e in self.vector.items()):
                raise ValueError(f"task vector {index} covers other tensors than task vector 1")
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in self.vector}
        self.groups = groups
        self.names = ParamNames(len(self.vectors), self.settings.sparsifies, self.settings.density_per_group)
        # one vector, plain task arithmetic: today's single fused add
        self.plain = len(self.vectors) == 1 and not (self.settings.sparsifies or self.settings.normalize)
        pin = torch.device(store_device).type == "cpu" and any(p.is_cuda for p in self.params.values())
        self.origin: dict[str, torch.Tensor] = {}
        for name in self.vector:
            live = self._live(name)
            copy = live.detach().to(store_device, copy=True)
            self.origin[name] = copy.pin_memory() if pin else copy
            for entries in self.vectors:
                entry = entries[name]
                if pin:  # page-locked host memory lets the per-trial host-to-device copies run asynchronously
                    entry.delta = entry.delta.pin_memory()
                if entry.delta.device != copy.device:
                    raise ValueError(f"{name}: the task vector and the target copy must live on one device")
        self.thresholds = self._precompute_thresholds()
        self.scratch = Scratch()  # a few chunk-sized work buffers, reused by every write
        self.current: dict[str, TensorSetting | None] = {name: 0.0 for name in self.vector}  # starts as the target
        # Writes per tensor, ever: a backend holding its own copy of the weights (vLLM) pushes the tensors whose
        # count moved since it last looked. Counted before the write, so a write that fails half way counts too.
        self.writes: dict[str, int] = dict.fromkeys(self.vector, 0)

    def _precompute_thresholds(self) -> dict[str, list[torch.Tensor]]:
        return ties_thresholds(self.vectors, self.settings)

    def _live(self, name: str) -> torch.Tensor:
        rows = self.vector[name].rows
        data = self.params[name].data
        return data if rows is None else data[:rows]

    def weight_names(self) -> list[str]:
        """The Optuna weight parameters, grouped by vector, each in model order."""
        order = ordered_groups(self.groups)
        return [self.names.weight(i, g) for i in range(len(self.vectors)) for g in order]

    def density_names(self) -> list[str]:
        """The Optuna density parameters (none under task arithmetic)."""
        if not self.settings.sparsifies:
            return []
        order = ordered_groups(self.groups) if self.settings.density_per_group else [""]  # "": the name has no group
        return [str(self.names.density(i, g)) for i in range(len(self.vectors)) for g in order]

    def weights_per_tensor(self, weights: dict[str, float]) -> dict[str, TensorSetting]:
        """{tensor: its setting}: a float weight for one plain vector, else (weights per vector, densities)."""
        wanted = set(self.weight_names()) | set(self.density_names())
        missing = wanted - weights.keys()
        if missing:
            raise KeyError(f"no weight given for group(s): {', '.join(sorted(missing))}")
        settings: dict[str, TensorSetting] = {}
        for name, group in ((n, self.groups[n]) for n in self.vector):
            if self.plain:
                settings[name] = float(weights[group])
                continue
            settings[name] = combined_setting(weights, self.names.weight, self.names.density, group,
                                              len(self.vectors), self.settings)
        return settings

    @torch.no_grad()
    def apply(self, weights: dict[str, float]) -> int:
        """Write the merge with these weights (and densities) into the live parameters; return how many tensors
        were rewritten."""
        written = 0
        for name, setting in self.weights_per_tensor(weights).items():
            if setting == self.current[name]:
                continue
            live, origin = self._live(name), self.origin[name]
            self.writes[name] += 1
            if self.plain:
                write_merged(live, origin, self.vector[name].delta, setting)
            else:
                write_setting(live, name, origin, [v[name].delta for v in self.vectors], self.thresholds.get(name),
                              setting, self.settings, self.scratch)
            self.current[name] = setting
            written += 1
        return written

    def stored_bytes(self) -> int:
        def size(t: torch.Tensor) -> int:
            return t.numel() * t.element_size()

        return (sum(size(t) for t in self.origin.values())
                + sum(size(e.delta) for entries in self.vectors for e in entries.values())
                + sum(size(t) for tables in self.thresholds.values() for t in tables))
