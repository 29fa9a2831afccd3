"""The MoE's per-trial writer: expert_i = target_i + sum_j w_ij * S(tau_j) into the slices whose setting changed,
then the routers.

Each write is the dense Merger's (merging.merger.write_merged for one plain vector, write_setting otherwise), keyed
by the dense tensor name, so an expert slot holds bit for bit what a dense merge of that target would; a trial
writes nothing to disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from task_vector_opt.merging.grouping import ordered_groups
from task_vector_opt.merging.merger import TensorSetting, combined_setting, ties_thresholds, write_merged, write_setting
from task_vector_opt.merging.methods import MergeSettings, ParamNames, Scratch
from task_vector_opt.merging.moe.build import InMemoryMoE
from task_vector_opt.merging.moe.config import MoESettings
from task_vector_opt.merging.moe.layout import expert_label, split_slot_key
from task_vector_opt.merging.moe.routers import router_vectors
from task_vector_opt.merging.task_vector import VectorEntry


@dataclass
class Slot:
    key: str  # "expert2/model.layers.3.mlp.up_proj.weight"
    group: str  # its group, "expert2/layer_03"; the Optuna names derive from it (MoENames)
    live: torch.Tensor  # a view into the MoE
    origin: torch.Tensor  # the target's own values
    entries: list[VectorEntry]  # one per task vector, shared by every expert: each vector is built once

    @property
    def name(self) -> str:
        """The dense tensor's name: it seeds the DARE masks and finds the TIES thresholds."""
        return split_slot_key(self.key)[1]


@dataclass(frozen=True)
class MoENames:
    """The MoE's Optuna names: the expert first, then the dense run's name of that expert's group, so one plain
    vector keeps "expert2/layer_07" (old MoE studies resume) and several give "expert2/v2/layer_07". Densities are
    per vector across experts ("density/v1"), or per expert group with --density_per_group
    ("density/v1/expert2/layer_07")."""

    dense: ParamNames

    def weight(self, vector: int, group: str) -> str:
        label, dense_group = group.split("/", 1)
        return f"{label}/{self.dense.weight(vector, dense_group)}"

    def density(self, vector: int, group: str) -> str | None:
        return self.dense.density(vector, group)


class MoEMerger:
    """Writes each expert's merge into the MoE's slices (the Merger's exact rule), then refreshes the routers."""

    def __init__(self, moe: InMemoryMoE, slots: list[Slot], refresh_routers: Callable[[], None] | None,
                 router_inputs: set[str], settings: MergeSettings | None = None,
                 vectors: Sequence[dict[str, VectorEntry]] | None = None):
        """``vectors``: the task vectors the slots' entries come from (needed for TIES' thresholds)."""
        self.moe = moe
        self.slots = slots
        self.settings = settings or MergeSettings()
        self.n_vectors = len(slots[0].entries) if slots else 1
        self.names = MoENames(ParamNames(self.n_vectors, self.settings.sparsifies, self.settings.density_per_group))
        self.plain = self.n_vectors == 1 and not (self.settings.sparsifies or self.settings.normalize)
        self.thresholds = ties_thresholds(vectors, self.settings) if vectors else {}  # per dense tensor, shared
        self.scratch = Scratch()
        self.refresh_routers = refresh_routers
        self.router_inputs = router_inputs  # slot keys whose change moves the routers
        self.current: dict[str, TensorSetting | None] = {slot.key: 0.0 for slot in slots}  # the live MoE starts from the unmodified targets
        self.router_refreshes = 0
        # Writes per slot, ever (a backend holding its own copy of the weights pushes what moved; see Merger.writes)
        self.writes: dict[str, int] = {slot.key: 0 for slot in slots}
        self.routers_stale = False  # a router input changed and the routers were not recomputed yet

    @property
    def groups(self) -> dict[str, str]:
        return {slot.key: slot.group for slot in self.slots}

    def weight_names(self) -> list[str]:
        """The Optuna weight parameters, grouped by vector, each in the MoE's group order."""
        order = ordered_groups(self.groups)
        return [self.names.weight(i, g) for i in range(self.n_vectors) for g in order]

    def density_names(self) -> list[str]:
        """The Optuna density parameters (none under task arithmetic)."""
        if not self.settings.sparsifies:
            return []
        order = ordered_groups(self.groups) if self.settings.density_per_group else [""]  # "": the name has no group
        return [str(self.names.density(i, g)) for i in range(self.n_vectors) for g in order]

    def _setting(self, slot: Slot, weights: dict[str, float]) -> TensorSetting:
        if self.plain:
            return float(weights[slot.group])
        return combined_setting(weights, self.names.weight, self.names.density, slot.group, self.n_vectors,
                                self.settings)

    @torch.no_grad()
    def apply(self, weights: dict[str, float]) -> int:
        """Rewrite the tensors whose setting changed; return how many were rewritten."""
        missing = (set(self.weight_names()) | set(self.density_names())) - weights.keys()
        if missing:
            raise KeyError(f"no weight given for group(s): {', '.join(sorted(missing))}")
        written: list[str] = []
        for slot in self.slots:
            setting = self._setting(slot, weights)
            if setting == self.current[slot.key]:
                continue
            self.writes[slot.key] += 1
            if self.plain:
                write_merged(slot.live, slot.origin, slot.entries[0].delta, setting)
            else:
                write_setting(slot.live, slot.name, slot.origin, [e.delta for e in slot.entries],
                              self.thresholds.get(slot.name), setting, self.settings, self.scratch)
            self.current[slot.key] = setting
            written.append(slot.key)
            if slot.key in self.router_inputs:  # stays set if a later write fails: the next apply refreshes
                self.routers_stale = True
        if self.refresh_routers is not None and self.routers_stale:
            self.refresh_routers()
            self.router_refreshes += 1
            self.routers_stale = False
        return len(written)

    def stored_bytes(self) -> int:
        origins = sum(s.origin.numel() * s.origin.element_size() for s in self.slots)
        deltas = {id(e.delta): e.delta for s in self.slots for e in s.entries}
        tables = sum(t.numel() * t.element_size() for per_vector in self.thresholds.values() for t in per_vector)
        return origins + sum(d.numel() * d.element_size() for d in deltas.values()) + tables


def _live_view(moe: InMemoryMoE, key: str, entry: VectorEntry) -> torch.Tensor:
    live = moe.live(key)
    return live if entry.rows is None else live[:entry.rows]


def make_merger(moe: InMemoryMoE, vectors: dict[str, VectorEntry] | Sequence[dict[str, VectorEntry]],
                groups: dict[str, str], origin_device: str, settings: MoESettings, tokenizer,
                merge: MergeSettings | None = None) -> MoEMerger:
    """Keep each slot's original values on ``origin_device`` and wire the router refresh for the gate mode.

    ``vectors``: one task vector or one per tuned model, over the same tensors."""
    vectors = [vectors] if isinstance(vectors, dict) else list(vectors)
    for index, other in enumerate(vectors[1:], 2):
        if other.keys() != vectors[0].keys() or any(other[n].rows != e.rows for n, e in vectors[0].items()):
            raise ValueError(f"task vector {index} covers other tensors than task vector 1")
    pin = torch.device(origin_device).type == "cpu" and moe.model.device.type == "cuda"
    if pin:  # page-locked memory lets the per-trial host-to-device copies run asynchronously
        for vector in vectors:
            for entry in vector.values():
                if entry.delta.device.type == "cpu":
                    entry.delta = entry.delta.pin_memory()
    slots = []
    for key, group in groups.items():
        _, name = split_slot_key(key)
        if name not in vectors[0]:
            continue  # --skip_embed leaves the embeddings out of the task vector
        live = _live_view(moe, key, vectors[0][name])
        origin = live.detach().to(origin_device, copy=True)
        slots.append(Slot(key, group, live, origin.pin_memory() if pin else origin, [v[name] for v in vectors]))
    base = expert_label(moe.base_index)
    inputs: set[str] = set()
    if settings.gate_mode == "hidden":  # the base expert's every tensor shapes the hidden states
        inputs = {s.key for s in slots if s.key.startswith(base + "/")}
    elif settings.gate_mode == "cheap_embed":  # only its input embedding matters
        embed = moe.dense.get_input_embeddings().weight
        inputs = {f"{base}/{n}" for n, p in moe.dense.named_parameters() if p is embed} & {s.key for s in slots}

    def refresh() -> None:
        moe.set_routers(router_vectors(settings, moe.dense, tokenizer))

    return MoEMerger(moe, slots, refresh if inputs else None, inputs, merge, vectors)
