"""Merge methods: how several task vectors of one tensor combine (task arithmetic, TIES, DARE), per trial.

What a new density needs is prepared once per run (TIES: each tensor's magnitude thresholds on a grid of
densities), so a trial only runs elementwise passes over the tensor: merged = origin + sum_i w_i * S(tau_i).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from task_vector_opt.identity import identity_when

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
CHUNK = 1 << 22  # entries per elementwise pass: the work buffers stay a few chunks, whatever the tensor size


@dataclass(frozen=True)
class MergeSettings:
    """How the vectors combine: the method and its searched / fixed parameters (validated by the CLI)."""

    # Each field says when it is part of the study's identity (task_vector_opt.identity): a density range or a
    # seed that the method never reads changes nothing.
    method: str = "task_arithmetic"
    density_min: float = identity_when(lambda merge: merge.sparsifies, default=0.1)
    density_max: float = identity_when(lambda merge: merge.sparsifies, default=1.0)
    density_per_group: bool = identity_when(lambda merge: merge.sparsifies, default=False)
    # None: DEFAULT_DARE_SEED for a dropping method, unused otherwise
    dare_seed: int | None = identity_when(lambda merge: merge.drops, default=None)
    normalize: bool = False  # mergekit's normalize: divide by the sum of the (agreeing) weights
    dare_rescale: str = identity_when(lambda merge: merge.drops, default="inverse_density")

    @property
    def is_plain(self) -> bool:
        """One weighted sum of the whole vectors: today's behaviour, and the default."""
        return self.method == "task_arithmetic" and not self.normalize

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


def dare_generator_seed(seed: int, vector: int, tensor: str, chunk: int = 0) -> int:
    """A seed per (run seed, vector, tensor, chunk): every mask is fixed by --dare_seed alone, independent of
    which tensors a trial rewrites or in which order."""
    digest = hashlib.sha256(f"{seed}/{vector}/{tensor}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _uniform(numel: int, generator_seed: int, device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
    generator = torch.Generator(device=device).manual_seed(generator_seed)
    if out is None:
        return torch.rand(numel, generator=generator, device=device, dtype=torch.float32)
    return torch.rand(numel, generator=generator, out=out)


def dare_keep_mask(tensor: str, vector: int, shape: torch.Size, density: float, seed: int,
                   device: torch.device) -> torch.Tensor:
    """The whole keep-mask of one vector's tensor: Bernoulli(density), one uniform draw per entry compared with
    the density, so the same seed and density give the same mask and a higher density keeps a superset."""
    numel = math.prod(shape)
    parts = [_uniform(min(CHUNK, numel - start), dare_generator_seed(seed, vector, tensor, start // CHUNK), device)
             < density for start in range(0, numel, CHUNK)]
    return torch.cat(parts).reshape(shape) if parts else torch.ones(shape, dtype=torch.bool, device=device)


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


class Scratch:
    """Work buffers of at most one chunk each, reused by every tensor of every trial: a trial allocates nothing
    (fresh large buffers cost page faults that dwarf the arithmetic on a CPU)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, role: str, numel: int, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        key = (role, device, dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(max(numel, min(CHUNK, 2 * numel)), dtype=dtype, device=device)
        return buffer[:numel]


@torch.no_grad()
def write_combined(live: torch.Tensor, sources: TensorSources, weights: Sequence[float],
                 densities: Sequence[float] | None, settings: MergeSettings, scratch: Scratch | None = None) -> None:
    """live = origin + sum_i w_i * S(tau_i), in float32, chunk by chunk, from the stored original: the result
    depends on the arguments only (never on what the live tensor held), so every method is exact across trials."""
    scratch = scratch or Scratch()
    device = live.device
    flat_live = live.view(-1)
    numel = flat_live.numel()
    plans = []  # (vector, weight folded with its rescale, threshold or None, dropping density or None)
    for i, (delta, w) in enumerate(zip(sources.deltas, weights)):
        if w == 0.0:  # contributes nothing; under election a zero is no vote either (mergekit: sign 0)
            continue
        density = densities[i] if densities is not None else 1.0
        if density >= 1.0 or not settings.sparsifies:
            plans.append((i, w, None, None))
        elif settings.method == "ties":
            plans.append((i, w, magnitude_threshold(sources, i, density), None))
        else:
            plans.append((i, w * _dare_scale(sources, i, density, settings, scratch, device), None, density))
    weight_sum = sum(weights[i] for i, *_ in plans)
    for start in range(0, numel, CHUNK):
        stop = min(start + CHUNK, numel)
        merged = _merge_chunk(sources, plans, slice(start, stop), start // CHUNK, settings, scratch, device)
        if not settings.elects and settings.normalize and abs(weight_sum) >= 1e-8:
            merged.div_(weight_sum)
        origin = scratch.get("origin", stop - start, device)
        merged.add_(origin.copy_(sources.origin.view(-1)[start:stop]))  # float32 + float32: the fast kernel
        flat_live[start:stop].copy_(merged)


def _dare_scale(sources: TensorSources, vector: int, density: float, settings: MergeSettings, scratch: Scratch,
                device: torch.device) -> float:
    """What the kept entries are multiplied by: 1/density, or mergekit's L1 rescale (norm before / after the
    drop, over the whole tensor; left at 1 below mergekit's epsilon)."""
    if settings.dare_rescale == "inverse_density":
        return 1.0 / density
    if settings.dare_rescale == "none":
        return 1.0
    delta = sources.deltas[vector].view(-1)
    before = after = 0.0
    for start in range(0, delta.numel(), CHUNK):
        part = delta[start:start + CHUNK].to(device, dtype=torch.float32, non_blocking=True).abs()
        uniform = _uniform(part.numel(), dare_generator_seed(settings.seed, vector, sources.name, start // CHUNK),
                           device, scratch.get("uniform", part.numel(), device))
        before += float(part.sum())
        after += float(part.masked_fill_(uniform >= density, 0.0).sum())
    if before < MERGEKIT_L1_EPS or after < MERGEKIT_L1_EPS:
        return 1.0
    return before / after


def _below(threshold: float) -> float:
    """The largest float32 under ``threshold``: hardshrink keeps |x| > it, i.e. |x| >= threshold, exactly."""
    value = torch.tensor(threshold, dtype=torch.float32)
    return float(torch.nextafter(value, torch.zeros_like(value)))


def _merge_chunk(sources: TensorSources, plans: list, part: slice, chunk: int, settings: MergeSettings,
                 scratch: Scratch, device: torch.device) -> torch.Tensor:
    """sum_i w_i * S(tau_i) of one chunk (float32, in a scratch buffer), with TIES' sign election and normalize.

    Masks are applied as arithmetic (hardshrink, 0/1 factors, lerp), not as boolean indexing: on a CPU those
    vectorized ops are several times faster than masked_fill / where, and they are exact here."""
    numel = part.stop - part.start
    total = scratch.get("total", numel, device)  # the linear sum, or the positive parts under election
    if not plans:
        return total.zero_()
    negative = scratch.get("negative", numel, device) if settings.elects else None
    normalizing = settings.elects and settings.normalize
    if normalizing:
        positive_weight = scratch.get("positive_weight", numel, device).zero_()
        negative_weight = scratch.get("negative_weight", numel, device).zero_()
    contribution = scratch.get("contribution", numel, device)
    side = scratch.get("side", numel, device)
    for position, (i, w, threshold, drop_density) in enumerate(plans):
        first = position == 0
        contribution.copy_(sources.deltas[i].view(-1)[part])  # float32 copy (from the host if stored there)
        if threshold is not None:  # TIES trim: entries below the density's magnitude threshold become 0
            torch.hardshrink(contribution, _below(threshold), out=side)
            contribution, side = side, contribution
        elif drop_density is not None:  # DARE drop: keep where the uniform draw is below the density
            keep = _uniform(numel, dare_generator_seed(settings.seed, i, sources.name, chunk), device,
                            scratch.get("uniform", numel, device))
            contribution.mul_(keep.neg_().add_(drop_density).sign_().clamp_(min=0))
        if not settings.elects:  # w folds DARE's rescale in
            torch.mul(contribution, w, out=total) if first else total.add_(contribution, alpha=w)
            continue
        contribution.mul_(w)
        if normalizing:  # the weights of the entries each sign would keep: w * [c > 0], w * [c < 0]
            positive_weight.add_(torch.sign(contribution, out=side).clamp_(min=0), alpha=w)
            negative_weight.add_(torch.sign(contribution, out=side).clamp_(max=0), alpha=-w)
        if first:
            torch.clamp(contribution, min=0, out=total)
            torch.clamp(contribution, max=0, out=negative)
        else:
            total.add_(torch.clamp(contribution, min=0, out=side))
            negative.add_(contribution.clamp_(max=0))
    if not settings.elects:
        return total
    # Elect the sign of the sum per entry (mergekit: a sum of 0 elects +) and keep the parts that agree:
    # elected is 1.0 where the sum is >= 0, else 0.0; lerp returns its end points exactly at 0 and 1.
    elected = torch.add(total, negative, out=side).sign_().add_(1).clamp_(max=1)
    merged = torch.lerp(negative, total, elected, out=contribution)
    if normalizing:
        divisor = torch.lerp(negative_weight, positive_weight, elected, out=side)
        merged.div_(divisor.add_(torch.eq(divisor, 0, out=scratch.get("zero", numel, device, torch.bool))))
    return merged
