"""What the sampler proposes (Optuna parameters) and how that becomes the merger's weights per group.

In every mode but ``profile`` the two are the same names. In ``profile`` mode the sampler proposes K knot
weights plus one weight per non-layer group (embed_tokens, norm, lm_head); the layer weights are interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass

from task_vector_opt.merging.grouping import LAYER_GROUP, knot_names, profile_weights


@dataclass(frozen=True)
class SearchSpace:
    params: list[str]  # Optuna parameter names, in the order they are proposed
    groups: list[str]  # the merger's groups (layer_00 ... plus non-layer tensors), model order
    layer_groups: tuple[str, ...] = ()  # profile mode: the layer groups in depth order
    n_knots: int = 0  # 0: params are the groups themselves

    @property
    def is_profile(self) -> bool:
        return self.n_knots > 0

    @property
    def derives_weights(self) -> bool:
        """True when the proposed parameters are not the merger's weights themselves (profile knots)."""
        return self.is_profile

    def ranges(self, weight_min: float, weight_max: float) -> dict[str, tuple[float, float]]:
        """Each proposed parameter's (low, high): every one a weight in the searched range."""
        return dict.fromkeys(self.params, (weight_min, weight_max))

    def weights(self, params: dict[str, float]) -> dict[str, float]:
        """The weight of every group for the proposed ``params``; parameters outside the space's own (the
        densities of a sparsifying merge) pass through unchanged."""
        passed_on = {name: float(value) for name, value in params.items() if name not in self.params}
        if not self.is_profile:
            return {**{group: float(params[group]) for group in self.groups}, **passed_on}
        layer_weights = profile_weights([params[k] for k in knot_names(self.n_knots)], len(self.layer_groups))
        by_layer = dict(zip(self.layer_groups, layer_weights, strict=True))
        return {**{group: by_layer[group] if group in by_layer else float(params[group]) for group in self.groups},
                **passed_on}


def search_space(groups: list[str], mode: str, n_knots: int = 0) -> SearchSpace:
    """The space of ``mode`` over the merger's ``groups`` (``ordered_groups``); ``n_knots`` for profile mode."""
    if mode != "profile":
        return SearchSpace(list(groups), list(groups))
    layers = sorted((g for g in groups if LAYER_GROUP.match(g)), key=lambda g: int(LAYER_GROUP.match(g)["index"]))
    if not 1 <= n_knots <= len(layers):
        raise ValueError(f"--profile_knots {n_knots}: the model has {len(layers)} decoder layers; give between 1 "
                         f"and {len(layers)} knots")
    others = [g for g in groups if g not in layers]
    return SearchSpace(knot_names(n_knots) + others, list(groups), tuple(layers), n_knots)
