"""The shape stage's first trials: the vector turned up, then down, in one depth block at a time.

A chat vector can help in some layers and harm the target's own skill in others. No uniform weight then gets both
skills, and the scale stage may end at 0. Before the run's sampler spends its trials, a design asks the models
directly where in depth the vector helps: for each block of depth (a profile knot, or a quarter of the layers in
layer mode) one trial raises that block alone (to w = 1, or to --weight_max when the best scale is already 1 or
more) and one drops it alone (to w = 0), every other layer staying at the best scale. A last trial then takes,
in every block, the best of its three levels (kept, raised, dropped) together: blocks are disjoint, so this is
the best combination if their effects add up.

The points are offsets of the shape parameters from the best scale (``ScaledSpace``), so a trial's parameters
alone still give its weights. Every owner (vector, MoE expert) moves together: the design's size does not grow
with the number of vectors.
"""
from __future__ import annotations

from dataclasses import dataclass

from task_vector_opt.merging.grouping import LAYER_GROUP
from task_vector_opt.search.space import SearchSpace, local_name, owner_of

LAYER_MODE_BLOCKS = 4  # depth blocks of layer mode (profile mode has one per knot); the default knot count
RAISED_WEIGHT = 1.0  # a raised block's weight: the vector as tuned, when the best scale is below it
COMBINED = "blocks combined"


@dataclass(frozen=True)
class DesignPoint:
    label: str  # "raise block 2", "drop block 2", "blocks combined": the trial's user attr, its identity
    offsets: dict[str, float]  # shape parameter -> offset from its owner's scale; parameters not named stay 0


def depth_blocks(shape: SearchSpace, n_blocks: int = LAYER_MODE_BLOCKS) -> list[list[str]]:
    """The shape parameters of each depth block, shallowest first, over every owner.

    Profile mode: knot k of every owner is block k. Layer mode: the layers in ``n_blocks`` contiguous runs of
    depth (as even as the layer count allows). Other modes (per tensor kind) have no depth: no blocks."""
    if shape.is_profile:
        return [[name for name in shape.params if local_name(name) == f"knot_{k}"] for k in range(shape.n_knots)]
    depth = {}
    for name in shape.params:
        match = LAYER_GROUP.match(local_name(name))
        if match:
            depth[name] = int(match["index"])
    if not depth:
        return []
    n_layers = max(depth.values()) + 1
    n_blocks = min(n_blocks, n_layers)
    blocks: list[list[str]] = [[] for _ in range(n_blocks)]
    for name, layer in depth.items():
        blocks[layer * n_blocks // n_layers].append(name)
    return [block for block in blocks if block]


def _clip(value: float, low: float, high: float) -> float:
    return round(min(max(value, low), high), 6)


def block_design(blocks: list[list[str]], scales: dict[str, float], weight_min: float,
                 weight_max: float) -> list[DesignPoint]:
    """Raise, then drop, each block alone. ``scales``: each owner's best scale ("" for one vector). A level that
    equals every owner's scale is no new merge and is left out."""
    def level_offsets(block: list[str], level) -> dict[str, float]:
        return {name: round(level(scales[owner_of(name)]) - scales[owner_of(name)], 6) for name in block}

    def raised(scale: float) -> float:
        return _clip(RAISED_WEIGHT if scale < RAISED_WEIGHT else weight_max, weight_min, weight_max)

    def dropped(_scale: float) -> float:
        return _clip(0.0, weight_min, weight_max)

    points = []
    for index, block in enumerate(blocks):
        for word, level in (("raise", raised), ("drop", dropped)):
            offsets = level_offsets(block, level)
            if any(offsets.values()):
                points.append(DesignPoint(f"{word} block {index + 1}", offsets))
    return points


def combination(points: list[DesignPoint], scores: dict[str, float], kept_score: float) -> DesignPoint | None:
    """Each block at its best level among kept (``kept_score``: the best scale's), raised and dropped, by the
    design's search scores; None when fewer than two blocks move (the design already scored that merge)."""
    best: dict[int, tuple[float, DesignPoint | None]] = {}
    for point in points:
        if point.label not in scores:
            continue
        block = int(point.label.rsplit(" ", 1)[1])
        if scores[point.label] > best.get(block, (kept_score, None))[0]:
            best[block] = (scores[point.label], point)
    moved = [point for _, point in best.values() if point is not None]
    if len(moved) < 2:
        return None
    offsets: dict[str, float] = {}
    for point in moved:
        offsets.update(point.offsets)
    return DesignPoint(COMBINED, offsets)
