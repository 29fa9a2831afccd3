"""Exact, in-place application of weights: param = target + w * task_vector, one fused op per tensor.

Every write starts from the stored original target tensor, never from the current
value, so applying weights A then B is bit-for-bit the same as applying B to a
fresh load. Tensors whose weight did not change are not touched.
"""
from __future__ import annotations

import torch

from task_vector_opt.merging.task_vector import VectorEntry


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


class Merger:
    def __init__(self, model: torch.nn.Module, vector: dict[str, VectorEntry], groups: dict[str, str],
                 store_device: str | torch.device):
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in vector}
        self.vector = vector
        self.groups = groups
        pin = torch.device(store_device).type == "cpu" and any(p.is_cuda for p in self.params.values())
        self.origin: dict[str, torch.Tensor] = {}
        for name, entry in vector.items():
            live = self._live(name)
            copy = live.detach().to(store_device, copy=True)
            self.origin[name] = copy.pin_memory() if pin else copy
            if pin:  # page-locked host memory lets the per-trial host-to-device copies run asynchronously
                entry.delta = entry.delta.pin_memory()
            if entry.delta.device != copy.device:
                raise ValueError(f"{name}: the task vector and the target copy must live on one device")
        self.current = {name: 0.0 for name in vector}  # the live model starts as the unmodified target

    def _live(self, name: str) -> torch.Tensor:
        rows = self.vector[name].rows
        data = self.params[name].data
        return data if rows is None else data[:rows]

    def weights_per_tensor(self, weights: dict[str, float]) -> dict[str, float]:
        missing = {self.groups[n] for n in self.vector} - weights.keys()
        if missing:
            raise KeyError(f"no weight given for group(s): {', '.join(sorted(missing))}")
        return {name: float(weights[self.groups[name]]) for name in self.vector}

    @torch.no_grad()
    def apply(self, weights: dict[str, float]) -> int:
        """Write target + w * vector into the live parameters; return how many tensors were rewritten."""
        written = 0
        for name, w in self.weights_per_tensor(weights).items():
            if w == self.current[name]:
                continue
            write_merged(self._live(name), self.origin[name], self.vector[name].delta, w)
            self.current[name] = w
            written += 1
        return written

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.origin.values()) + sum(
            e.delta.numel() * e.delta.element_size() for e in self.vector.values())
