"""The MoE's per-trial writer: origin + w * delta into the slices whose weight changed, then the routers.

The write itself is the dense Merger's (merging.merger.write_merged); a trial writes nothing to disk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from task_vector_opt.merging.merger import write_merged
from task_vector_opt.merging.moe.build import InMemoryMoE
from task_vector_opt.merging.moe.config import MoESettings
from task_vector_opt.merging.moe.layout import expert_label, split_slot_key
from task_vector_opt.merging.moe.routers import router_vectors
from task_vector_opt.merging.task_vector import VectorEntry


@dataclass
class Slot:
    key: str  # "expert2/model.layers.3.mlp.up_proj.weight"
    group: str  # the Optuna parameter that weighs it
    live: torch.Tensor  # a view into the MoE
    origin: torch.Tensor  # the target's own values
    entry: VectorEntry  # shared by every expert: the task vector is built once


class MoEMerger:
    """Writes origin + w * delta into the MoE's slices (the Merger's exact rule), then refreshes the routers."""

    def __init__(self, moe: InMemoryMoE, slots: list[Slot], refresh_routers: Callable[[], None] | None,
                 router_inputs: set[str]):
        self.moe = moe
        self.slots = slots
        self.refresh_routers = refresh_routers
        self.router_inputs = router_inputs  # slot keys whose change moves the routers
        self.current = {slot.key: 0.0 for slot in slots}  # the live MoE starts from the unmodified targets
        self.router_refreshes = 0
        self.routers_stale = False  # a router input changed and the routers were not recomputed yet

    @property
    def groups(self) -> dict[str, str]:
        return {slot.key: slot.group for slot in self.slots}

    @torch.no_grad()
    def apply(self, weights: dict[str, float]) -> int:
        """Rewrite the tensors whose weight changed; return how many were rewritten."""
        missing = {slot.group for slot in self.slots} - weights.keys()
        if missing:
            raise KeyError(f"no weight given for group(s): {', '.join(sorted(missing))}")
        written: list[str] = []
        for slot in self.slots:
            w = float(weights[slot.group])
            if w == self.current[slot.key]:
                continue
            write_merged(slot.live, slot.origin, slot.entry.delta, w)
            self.current[slot.key] = w
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
        deltas = {id(s.entry.delta): s.entry.delta for s in self.slots}
        return origins + sum(d.numel() * d.element_size() for d in deltas.values())


def _live_view(moe: InMemoryMoE, key: str, entry: VectorEntry) -> torch.Tensor:
    live = moe.live(key)
    return live if entry.rows is None else live[:entry.rows]


def make_merger(moe: InMemoryMoE, vector: dict[str, VectorEntry], groups: dict[str, str], origin_device: str,
                settings: MoESettings, tokenizer) -> MoEMerger:
    """Keep each slot's original values on ``origin_device`` and wire the router refresh for the gate mode."""
    pin = torch.device(origin_device).type == "cpu" and moe.model.device.type == "cuda"
    if pin:  # page-locked memory lets the per-trial host-to-device copies run asynchronously
        for entry in vector.values():
            if entry.delta.device.type == "cpu":
                entry.delta = entry.delta.pin_memory()
    slots = []
    for key, group in groups.items():
        _, name = split_slot_key(key)
        if name not in vector:
            continue  # --skip_embed leaves the embeddings out of the task vector
        live = _live_view(moe, key, vector[name])
        origin = live.detach().to(origin_device, copy=True)
        slots.append(Slot(key, group, live, origin.pin_memory() if pin else origin, vector[name]))
    base = expert_label(moe.base_index)
    inputs: set[str] = set()
    if settings.gate_mode == "hidden":  # the base expert's every tensor shapes the hidden states
        inputs = {s.key for s in slots if s.key.startswith(base + "/")}
    elif settings.gate_mode == "cheap_embed":  # only its input embedding matters
        embed = moe.dense.get_input_embeddings().weight
        inputs = {f"{base}/{n}" for n, p in moe.dense.named_parameters() if p is embed} & {s.key for s in slots}

    def refresh() -> None:
        moe.set_routers(router_vectors(settings, moe.dense, tokenizer))

    return MoEMerger(moe, slots, refresh if inputs else None, inputs)

