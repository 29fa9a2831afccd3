"""Merge methods: how several task vectors of one tensor combine (task arithmetic, TIES, DARE), per trial.

What a new density needs is prepared once per run (TIES: each tensor's magnitude thresholds on a grid of
densities), so a trial only runs elementwise passes over the tensor: merged = origin + sum_i w_i * S(tau_i).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import torch

MERGE_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
DROPPING_METHODS = ("dare_linear", "dare_ties")  # random drop: masks from --dare_seed
ELECTING_METHODS = ("ties", "dare_ties")  # sign election: only contributions that agree with the elected sign
DARE_RESCALES = ("inverse_density", "l1", "none")
DEFAULT_DARE_SEED = 42
# Densities are searched on a grid of 1/DENSITY_GRID: TIES thresholds are precomputed at each grid point, so a
# trial's density costs a table lookup instead of a sort of the tensor.
DENSITY_GRID = 1000
DENSITY_STEP = 1 / DENSITY_GRID
MERGEKIT_L1_EPS = 1e-7  # below this norm mergekit leaves a masked tensor unscaled; so do we


@dataclass(frozen=True)
class MergeSettings:
    """How the vectors combine: the method and its searched / fixed parameters (validated by the CLI)."""

    method: str = "task_arithmetic"
    density_min: float = 0.1
    density_max: float = 1.0
    density_per_group: bool = False
    dare_seed: int | None = None  # None: DEFAULT_DARE_SEED for a dropping method, unused otherwise
    normalize: bool = False  # mergekit's normalize: divide by the sum of the (agreeing) weights
    dare_rescale: str = "inverse_density"

    @property
    def sparsifies(self) -> bool:
        return self.method != "task_arithmetic"

    @property
    def drops(self) -> bool:
        return self.method in DROPPING_METHODS

    @property
    def elects(self) -> bool:
        return self.method in ELECTING_METHODS

    @property
    def seed(self) -> int:
        return DEFAULT_DARE_SEED if self.dare_seed is None else self.dare_seed

    def recipe_inputs(self) -> dict[str, Any]:
        """The settings that change the merge (a seed or rescale that the method never uses is left out)."""
        inputs: dict[str, Any] = {"merge_method": self.method, "normalize": self.normalize}
        if self.sparsifies:
            inputs.update(density_min=self.density_min, density_max=self.density_max,
                          density_per_group=self.density_per_group)
        if self.drops:
            inputs.update(dare_seed=self.seed, dare_rescale=self.dare_rescale)
        return inputs

    @classmethod
    def from_recipe_inputs(cls, inputs: dict[str, Any] | None) -> "MergeSettings":
        """The settings a recipe's ``inputs["merge"]`` describes (plain task arithmetic when absent)."""
        inputs = dict(inputs or {})
        method = inputs.pop("merge_method", "task_arithmetic")
        known = {f for f in cls.__dataclass_fields__ if f != "method"}
        return cls(method=method, **{k: v for k, v in inputs.items() if k in known})


@dataclass(frozen=True)
class ParamNames:
    """Readable Optuna parameter names. One vector keeps the plain group names ("layer_07"), so studies made
    before several vectors existed resume; several give "v2/layer_07". Densities: "density/v1" (per vector)
    or "density/v1/layer_07" (--density_per_group)."""

    n_vectors: int
    sparsifies: bool
    per_group: bool

    def weight(self, vector: int, group: str) -> str:
        return group if self.n_vectors == 1 else f"v{vector + 1}/{group}"

    def density(self, vector: int, group: str) -> str | None:
        if not self.sparsifies:
            return None
        return f"density/v{vector + 1}" + (f"/{group}" if self.per_group else "")


def snap_density(density: float) -> float:
    """The grid density a searched value stands for (Optuna's stepped floats carry rounding noise)."""
    return round(density * DENSITY_GRID) / DENSITY_GRID


def kept_count(density: float, numel: int) -> int:
    """How many entries TIES keeps: mergekit's rule (at least one of a non-empty tensor)."""
    return max(1, int(density * numel))


def magnitude_thresholds(delta: torch.Tensor, density_min: float, density_max: float) -> torch.Tensor:
    """|delta| of the k-th largest entry for every grid density in [density_min, density_max] (float32, CPU).

    Keeping |delta| >= threshold keeps the top k; entries tied with the k-th are all kept (mergekit's argsort
    picks among ties arbitrarily, so it has no better-defined answer there).
    """
    magnitudes = delta.detach().reshape(-1).abs().to(torch.float32)
    ordered = torch.sort(magnitudes, descending=True).values
    del magnitudes
    first, last = round(density_min * DENSITY_GRID), round(density_max * DENSITY_GRID)
    numel = ordered.numel()
    ranks = torch.tensor([kept_count(j / DENSITY_GRID, numel) - 1 for j in range(first, last + 1)],
                         device=ordered.device)
    return ordered[ranks].cpu()


def dare_generator_seed(seed: int, vector: int, tensor: str) -> int:
    """A seed per (run seed, vector, tensor): every tensor's mask is fixed by --dare_seed alone, independent of
    which tensors a trial rewrites or in which order."""
    digest = hashlib.sha256(f"{seed}/{vector}/{tensor}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare_keep_mask(shape: torch.Size, density: float, generator_seed: int, device: torch.device) -> torch.Tensor:
    """Bernoulli(density) keep-mask from a fresh seeded generator: the same (seed, density) gives the same mask,
    and a higher density keeps a superset (one uniform draw per entry, compared with the density)."""
    generator = torch.Generator(device=device).manual_seed(generator_seed)
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32) < density


def dare_rescaled(delta: torch.Tensor, keep: torch.Tensor, density: float, rescale: str) -> torch.Tensor:
    """The kept entries of ``delta`` (float32), rescaled: by 1/density (the DARE paper), to the original L1 norm
    (mergekit 0.1.5's rescale), or not at all."""
    masked = delta * keep
    if rescale == "inverse_density":
        return masked.div_(density)
    if rescale == "l1":
        before, after = delta.abs().sum(), masked.abs().sum()
        if before < MERGEKIT_L1_EPS or after < MERGEKIT_L1_EPS:
            return masked
        return masked * (before / after)
    return masked


@dataclass
class TensorSources:
    """One tensor's inputs to a trial: its stored original and its vectors' deltas, with what was precomputed."""

    name: str
    origin: torch.Tensor
    deltas: Sequence[torch.Tensor]
    thresholds: Sequence[torch.Tensor] | None = None  # TIES: one grid table per vector
    threshold_offset: int = 0  # grid index of each table's first entry


def magnitude_threshold(sources: TensorSources, vector: int, density: float) -> float:
    """The precomputed threshold of a grid density; off the searched range (a hand-given density), sorted now."""
    index = round(density * DENSITY_GRID) - sources.threshold_offset
    if sources.thresholds is not None and 0 <= index < len(sources.thresholds[vector]):
        return float(sources.thresholds[vector][index])
    return float(magnitude_thresholds(sources.deltas[vector], density, density)[0])


@torch.no_grad()
def merged_delta(sources: TensorSources, weights: Sequence[float], densities: Sequence[float] | None,
                 settings: MergeSettings, device: torch.device) -> torch.Tensor:
    """sum_i w_i * S(tau_i) in float32 on ``device``, with TIES' sign election and mergekit's normalize."""
    mixed: torch.Tensor | None = None
    positive = negative = positive_weight = negative_weight = None
    weight_sum = 0.0
    for i, (delta, w) in enumerate(zip(sources.deltas, weights)):
        if w == 0.0:  # contributes nothing; under election a zero is no vote either (sign 0)
            continue
        tau = delta.to(device=device, dtype=torch.float32, non_blocking=True)
        density = densities[i] if densities is not None else 1.0
        if density < 1.0 and settings.method == "ties":
            threshold = magnitude_threshold(sources, i, density)
            tau = torch.where(tau.abs() >= threshold, tau, 0.0)
        elif density < 1.0 and settings.drops:
            keep = dare_keep_mask(tau.shape, density, dare_generator_seed(settings.seed, i, sources.name), device)
            tau = dare_rescaled(tau, keep, density, settings.dare_rescale)
        contribution = tau * w if tau is delta else tau.mul_(w)  # never scale a stored delta in place
        if settings.elects:
            # Keep the positive and the negative parts apart: the elected sign (that of the sum) picks one.
            up, down = contribution.clamp(min=0), contribution.clamp(max=0)
            positive = up if positive is None else positive.add_(up)
            negative = down if negative is None else negative.add_(down)
            if settings.normalize:
                up_w, down_w = (contribution > 0) * w, (contribution < 0) * w
                positive_weight = up_w if positive_weight is None else positive_weight.add_(up_w)
                negative_weight = down_w if negative_weight is None else negative_weight.add_(down_w)
        else:
            mixed = contribution if mixed is None else mixed.add_(contribution)
            weight_sum += w
        del tau, contribution
    if settings.elects:
        if positive is None:
            return torch.zeros(sources.origin.shape, dtype=torch.float32, device=device)
        elected_positive = (positive + negative) >= 0  # mergekit: a tie (sum 0) elects +
        mixed = torch.where(elected_positive, positive, negative)
        if settings.normalize:
            divisor = torch.where(elected_positive, positive_weight, negative_weight)
            mixed.div_(divisor.masked_fill_(divisor == 0, 1.0))
        return mixed
    if mixed is None:
        return torch.zeros(sources.origin.shape, dtype=torch.float32, device=device)
    if settings.normalize and abs(weight_sum) >= 1e-8:
        mixed.div_(weight_sum)
    return mixed


@torch.no_grad()
def write_merged(live: torch.Tensor, sources: TensorSources, weights: Sequence[float],
                 densities: Sequence[float] | None, settings: MergeSettings) -> None:
    """live = origin + merged delta, from the stored original: the result depends on the arguments only."""
    origin = sources.origin.to(live.device, non_blocking=True)
    merged = merged_delta(sources, weights, densities, settings, live.device)
    live.copy_(merged.add_(origin))
