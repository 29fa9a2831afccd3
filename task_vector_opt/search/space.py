"""What the sampler proposes (Optuna parameters) and how that becomes the merger's weights per group.

In every mode but ``profile`` the two are the same names. In ``profile`` mode the sampler proposes K knot
weights per owner plus one weight per non-layer group (embed_tokens, norm, lm_head); the layer weights are
interpolated. An owner is what a weight belongs to besides its group: nothing for one vector ("layer_07",
"knot_0"), the vector with several ("v2/layer_07", "v2/knot_0"), the expert (and vector) in the MoE scripts
("expert2/layer_07", "expert2/v2/knot_0").
"""
from __future__ import annotations

from dataclasses import dataclass

from task_vector_opt.merging.grouping import LAYER_GROUP, knot_names, profile_weights


def owner_of(name: str) -> str:
    """"v2/layer_07" -> "v2"; "expert2/v1/knot_0" -> "expert2/v1"; "layer_07" -> ""."""
    return name.rsplit("/", 1)[0] if "/" in name else ""


def local_name(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def owned(owner: str, name: str) -> str:
    return f"{owner}/{name}" if owner else name


@dataclass(frozen=True)
class SearchSpace:
    params: list[str]  # Optuna parameter names, in the order they are proposed
    groups: list[str]  # the merger's groups (layer_00 ... plus non-layer tensors), model order
    # profile mode: (owner, its layer groups in depth order) for each owner
    profiles: tuple[tuple[str, tuple[str, ...]], ...] = ()
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
        by_layer: dict[str, float] = {}
        for owner, layers in self.profiles:
            knots = [params[owned(owner, k)] for k in knot_names(self.n_knots)]
            by_layer.update(zip(layers, profile_weights(knots, len(layers)), strict=True))
        return {**{group: by_layer[group] if group in by_layer else float(params[group]) for group in self.groups},
                **passed_on}


def search_space(groups: list[str], mode: str, n_knots: int = 0) -> SearchSpace:
    """The space of ``mode`` over the merger's ``groups`` (``ordered_groups``); ``n_knots`` for profile mode:
    that many knots for each owner (vector, expert) of layer groups."""
    if mode != "profile":
        return SearchSpace(list(groups), list(groups))
    layers: dict[str, list[str]] = {}
    for group in groups:
        if LAYER_GROUP.match(local_name(group)):
            layers.setdefault(owner_of(group), []).append(group)
    profiles = tuple((owner, tuple(sorted(names, key=lambda g: int(LAYER_GROUP.match(local_name(g))["index"]))))
                     for owner, names in layers.items())
    n_layers = min((len(names) for _, names in profiles), default=0)
    if not 1 <= n_knots <= n_layers:
        raise ValueError(f"--profile_knots {n_knots}: the model has {n_layers} decoder layers; give between 1 "
                         f"and {n_layers}")
    in_profiles = {g for _, names in profiles for g in names}
    others = [g for g in groups if g not in in_profiles]
    knots = [owned(owner, k) for owner, _ in profiles for k in knot_names(n_knots)]
    return SearchSpace(knots + others, list(groups), profiles, n_knots)
