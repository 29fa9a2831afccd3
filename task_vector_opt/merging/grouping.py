"""Map parameter names to search groups for the three optimize modes.

The rules are data (regexes below), so a new architecture whose decoder layers
live under another container name needs one entry here, not new code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

OPTIMIZE_MODES = ("all", "layer", "parameter", "profile")
AUTO_MODE = "auto"  # --optimize_mode's default: profile where it applies, else layer (cli.validation)
# profile mode: the merger's groups are layer mode's; the search proposes knot weights along depth instead
LAYER_GROUP = re.compile(r"^layer_(?P<index>\d+)$")

# Containers that hold numbered decoder layers, across decoder-only families
# (Llama/Mistral/Qwen2/Gemma: model.layers.N, GPT-2/Falcon: transformer.h.N,
#  MPT: transformer.blocks.N, Mixtral-style MoE: same as Llama).
LAYER_PATTERN = re.compile(r"^(?P<prefix>.*?)(?:^|\.)(?:layers|h|blocks|block)\.(?P<index>\d+)\.(?P<rest>.+)$")
# Prefixes that carry no meaning for a reader ("model.embed_tokens" -> "embed_tokens").
STRIPPED_PREFIXES = ("model.language_model.", "model.", "transformer.", "language_model.")
STRIPPED_SUFFIX = ".weight"


@dataclass(frozen=True)
class ParamLocation:
    layer: int | None  # decoder layer index, None for embeddings, final norm, lm_head, ...
    module: str  # module path inside its layer ("self_attn.q_proj") or outside ("embed_tokens")
    tensor: str  # the module path plus ".bias" etc. when the tensor is not ".weight"


def locate(name: str) -> ParamLocation:
    """Split a parameter name into (layer index, module, tensor) for grouping."""
    match = LAYER_PATTERN.match(name)
    if match:
        layer: int | None = int(match.group("index"))
        rest = match.group("rest")
    else:
        layer = None
        rest = name
        for prefix in STRIPPED_PREFIXES:
            if rest.startswith(prefix):
                rest = rest[len(prefix):]
                break
    tensor = rest[: -len(STRIPPED_SUFFIX)] if rest.endswith(STRIPPED_SUFFIX) else rest
    module = tensor.rsplit(".", 1)[0] if tensor.endswith(".bias") else tensor
    return ParamLocation(layer=layer, module=module, tensor=tensor)


def _layer_label(index: int, width: int) -> str:
    return f"layer_{index:0{width}d}"


def group_names(param_names: list[str], mode: str) -> dict[str, str]:
    """Return {parameter name: readable Optuna parameter name} for ``mode``.

    all       -> one group per tensor ("layer_07.self_attn.q_proj", "embed_tokens")
    layer     -> one per decoder layer ("layer_07") plus one per non-layer tensor
    parameter -> one per kind of module ("self_attn.q_proj", "input_layernorm", "lm_head")
    profile   -> the groups of layer mode; the layer weights come from knots (``profile_weights``)
    """
    if mode not in OPTIMIZE_MODES:
        raise ValueError(f"unknown optimize mode {mode!r}; choose one of {', '.join(OPTIMIZE_MODES)}")
    locations = {name: locate(name) for name in param_names}
    layer_indices = [loc.layer for loc in locations.values() if loc.layer is not None]
    width = max(2, len(str(max(layer_indices)))) if layer_indices else 2
    groups: dict[str, str] = {}
    for name, loc in locations.items():
        if mode == "parameter":
            groups[name] = loc.module
        elif loc.layer is None:
            groups[name] = loc.tensor
        elif mode in ("layer", "profile"):
            groups[name] = _layer_label(loc.layer, width)
        else:
            groups[name] = f"{_layer_label(loc.layer, width)}.{loc.tensor}"
    return groups


def ordered_groups(groups: dict[str, str]) -> list[str]:
    """Distinct group names in first-seen (model) order, so studies read top to bottom."""
    return list(dict.fromkeys(groups.values()))


def knot_names(n_knots: int) -> list[str]:
    return [f"knot_{i}" for i in range(n_knots)]


def profile_weights(knots: list[float], n_layers: int) -> list[float]:
    """Layer weights linearly interpolated along depth from knots spread evenly from the first layer to the last
    (mergekit's gradient lists). Layer i sits at i * (K - 1) / (L - 1) knot spacings; the split into a whole
    and a fractional part is done in integers, so a layer that falls on a knot gets the knot's weight exactly."""
    n_knots = len(knots)
    if n_knots < 1 or n_knots > max(n_layers, 1):
        raise ValueError(f"{n_knots} knots for {n_layers} layers; give between 1 and {n_layers} knots")
    if n_knots == 1 or n_layers == 1:
        return [float(knots[0])] * n_layers
    weights = []
    for layer in range(n_layers):
        left, remainder = divmod(layer * (n_knots - 1), n_layers - 1)
        if remainder == 0:
            weights.append(float(knots[left]))
        else:
            fraction = remainder / (n_layers - 1)
            weights.append(float(knots[left] + (knots[left + 1] - knots[left]) * fraction))
    return weights
