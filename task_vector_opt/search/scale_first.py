"""Scale first, then the shape: the default search.

A chat vector that is too strong for its target can have its best uniform weight at 0.1, where a search that
starts at w = 1 never looks. So the search runs in two stages over one parameter set:

1. **Scale.** One uniform weight per task vector (``scale``; ``scale/v1``, ``scale/v2``, ... with several),
   tried on a fixed design that spans the whole --weight_min..--weight_max range (values near both ends and 0
   included), then refined once around the best design point. These trials are enqueued (Optuna's own queue),
   so several workers share them and a resumed study continues where it stopped.
2. **Shape.** The shape parameters (profile knots, or one per group) become *offsets* from the scale found:
   weight = clip(scale_v + offset, weight_min, weight_max), each offset in
   [-(weight_max - weight_min), weight_max - weight_min], so every layer group can reach any weight of the range
   whatever the scale (0 included). First a block design (``search.blocks``) raises and drops one depth block at
   a time and combines the blocks' best levels; then the run's sampler searches the offsets (CMA-ES by default,
   starting at the best design point, with the earlier defaults' step of 1/6 of the weight range). The scale
   stays at the best scale-stage trial's.

A scale-stage trial proposes offset 0 everywhere, so its weights are exactly uniform per vector. A trial's
parameters alone give its weights (``ScaledSpace.weights``): the report, the holdout and --finalize need
nothing else. Which trial is declared best is ``search.selection``'s rule.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from optuna.trial import TrialState

from task_vector_opt.search.samplers import make_sampler
from task_vector_opt.search.blocks import COMBINED, DesignPoint, block_design, combination, depth_blocks
from task_vector_opt.search.space import SearchSpace, local_name, owned, owner_of, search_space
from task_vector_opt.search.study import BASELINES, FINISHED

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

STAGE_ATTR = "stage"  # trial user attr: "scale" for the scale stage's trials (baselines included), "blocks"
SCALE_STAGE = "scale"
BLOCK_STAGE = "blocks"  # the block design's trials (search.blocks)
POINT_ATTR = "design_point"  # trial user attr of a block-design trial: its label ("raise block 2")
REFINEMENT_ATTR = "scale_stage_refinement"  # study user attr: the refinement's points, once the design has finished
BLOCKS_ATTR = "block_design"  # study user attr: the block design's points, once the scale stage has finished
COMBINATION_ATTR = "block_combination"  # study user attr: the combined point (or null), once the blocks finished
# The design's uniform weights, as fractions of the range above max(--weight_min, 0) (one vector): 0.25, 0.5,
# 0.1 and 2.0 for the default range, beside the baselines' 1 and 0. Near 0 and at the top end, so a vector far
# too strong (best near 0.1) or too weak (best near 2) is found as surely as one close to plain addition.
ONE_VECTOR_FRACTIONS = (0.125, 0.25, 0.05, 1.0)
# Two vectors: both together at these fractions (the top end included), and each one alone (the other dropped)
# at 1 and 0.5. With more scales than two (the experts of a MoE) the one-vector design moves all of them
# together; the refinement then moves each scale on its own.
SEVERAL_VECTORS_FRACTIONS = (0.125, 0.25, 1.0)
NEGATIVE_FRACTIONS = (0.25, 1.0)  # of --weight_min, when the range goes below 0


def scale_name(owner: str) -> str:
    """The scale parameter of an owner: "scale" (one vector), "scale/v2", "scale/expert2" (MoE)."""
    return f"scale/{owner}" if owner else "scale"


def is_scale_name(name: str) -> bool:
    return name == "scale" or name.startswith("scale/")


OFFSET_STEP = 1 / 12  # CMA-ES's first step over the offsets: 1/6 of the weight range (see shape_sampler)


def offset_range(weight_min: float, weight_max: float) -> tuple[float, float]:
    """A shape offset's range: from any scale in the weight range, any other weight of the range is reachable."""
    span = weight_max - weight_min
    return (-span, span)


@dataclass(frozen=True)
class ScaledSpace:
    """A shape space (its parameters read as offsets) from one scale per owner: per vector, per MoE expert."""

    shape: SearchSpace
    weight_min: float
    weight_max: float

    @property
    def owners(self) -> list[str]:
        return list(dict.fromkeys(owner_of(group) for group in self.shape.groups))

    @property
    def n_vectors(self) -> int:
        """How many scales (vectors, or experts' vectors) the scale stage searches."""
        return len(self.owners)

    @property
    def scales(self) -> list[str]:
        return [scale_name(owner) for owner in self.owners]

    @property
    def params(self) -> list[str]:
        return self.scales + self.shape.params

    @property
    def groups(self) -> list[str]:
        return self.shape.groups

    @property
    def is_profile(self) -> bool:
        return self.shape.is_profile

    @property
    def derives_weights(self) -> bool:
        return True

    def ranges(self, weight_min: float, weight_max: float) -> dict[str, tuple[float, float]]:
        offsets = offset_range(self.weight_min, self.weight_max)
        return {**dict.fromkeys(self.scales, (weight_min, weight_max)), **dict.fromkeys(self.shape.params, offsets)}

    def weights(self, params: dict[str, float]) -> dict[str, float]:
        """Every group's weight: its owner's scale plus the shape's offset for it, clipped to the range;
        other parameters (densities) pass through."""
        offsets = self.shape.weights({name: value for name, value in params.items() if name not in self.scales})
        groups = set(self.groups)
        weights = {}
        for name, offset in offsets.items():
            if name in groups:
                value = float(params[scale_name(owner_of(name))]) + offset
                weights[name] = min(max(value, self.weight_min), self.weight_max)
            else:
                weights[name] = offset
        return weights

    def uniform(self, scales: tuple[float, ...]) -> dict[str, float]:
        """The parameters of a scale-stage trial: these scales, every offset 0."""
        return {**dict(zip(self.scales, scales, strict=True)), **dict.fromkeys(self.shape.params, 0.0)}

    def with_offsets(self, scales: tuple[float, ...], offsets: dict[str, float]) -> dict[str, float]:
        """The parameters of a block-design trial: these scales, these offsets, every other offset 0."""
        return {**self.uniform(scales), **offsets}


def _clip(value: float, low: float, high: float) -> float:
    return round(min(max(value, low), high), 6)


def design(n_vectors: int, weight_min: float, weight_max: float) -> list[tuple[float, ...]]:
    """The scale stage's first points (besides the baselines all-1 and all-0), most informative first."""
    low = max(weight_min, 0.0)  # fractions of the non-negative part of the range, from its lower end
    span = max(weight_max - low, 0.0)
    points: list[tuple[float, ...]] = []
    if n_vectors != 2:  # one scale, or many (MoE experts): the same weight for all, over the whole range
        points += [(low + span * f,) * n_vectors for f in ONE_VECTOR_FRACTIONS]
    else:
        points += [(low + span * f,) * n_vectors for f in SEVERAL_VECTORS_FRACTIONS]
        for level in (1.0, 0.5):  # each vector alone: a vector that only harms is dropped here
            for i in range(n_vectors):
                points.append(tuple(level if j == i else 0.0 for j in range(n_vectors)))
    if weight_min < 0:
        points += [(weight_min * f,) * n_vectors for f in NEGATIVE_FRACTIONS]
    seen: list[tuple[float, ...]] = [(1.0,) * n_vectors, (0.0,) * n_vectors]  # the baselines
    seen = [tuple(_clip(v, weight_min, weight_max) for v in p) for p in seen]
    out = []
    for point in points:
        clipped = tuple(_clip(v, weight_min, weight_max) for v in point)
        if clipped not in seen:
            seen.append(clipped)
            out.append(clipped)
    return out


def refinement(tried: list[tuple[tuple[float, ...], float]], weight_min: float,
               weight_max: float) -> list[tuple[float, ...]]:
    """Points halfway between the best scale point and its neighbours, one coordinate (vector) at a time.

    ``tried``: (scales, score) of the finished scale-stage trials. A neighbour is the next lower or higher
    value that coordinate took in any tried point (or the range's end)."""
    if not tried:
        return []
    best = max(tried, key=lambda item: item[1])[0]
    known = {point for point, _ in tried}
    out = []
    for i, value in enumerate(best):
        values = sorted({point[i] for point, _ in tried} | {_clip(weight_min, weight_min, weight_max),
                                                            _clip(weight_max, weight_min, weight_max)})
        lower = [v for v in values if v < value]
        higher = [v for v in values if v > value]
        for neighbour in (lower[-1] if lower else None, higher[0] if higher else None):
            if neighbour is None:
                continue
            point = tuple(_clip((value + neighbour) / 2, weight_min, weight_max) if j == i else v
                          for j, v in enumerate(best))
            if point not in known and point not in out:
                out.append(point)
    return out


class ScaleStage:
    """Enqueues the scale stage's trials and the block design's, and tells which scale the shape stage uses.

    The scale stage's points are the baselines (w = 1, then w = 0), the design, then the refinement around the
    best design point (computed once, when every design trial has finished, and kept in the study). When the
    whole scale stage has finished, the block design (``search.blocks``) is decided from its best scale, and when
    the design's trials have finished, their combination. Each decision is kept in the study's user attrs, so
    workers share it and a resumed study goes on where it stopped. Points are enqueued a few at a time, never more
    than the run's --n_trials leaves room for, so a study stopped at its budget holds no waiting trials."""

    def __init__(self, space: ScaledSpace, baselines: bool, fixed: dict[str, float] | None = None,
                 n_trials: int = 0):
        self.space = space
        self.baselines = baselines
        self.fixed = fixed or {}  # parameters every scale trial shares (the densities of a sparsifying merge)
        self.n_trials = n_trials
        self.blocks = depth_blocks(space.shape)

    def first_points(self) -> list[tuple[float, ...]]:
        """The baselines and the design, in the order they are scored."""
        n, low, high = self.space.n_vectors, self.space.weight_min, self.space.weight_max
        ends = [(_clip(value, low, high),) * n for _label, value in BASELINES]
        return list(dict.fromkeys(ends + design(n, low, high)))

    def _enqueue(self, study: optuna.Study, scales: tuple[float, ...]) -> None:
        attrs: dict[str, Any] = {STAGE_ATTR: SCALE_STAGE}
        for label, value in BASELINES:
            if self.baselines and scales == (value,) * self.space.n_vectors:
                attrs["baseline"] = label
        study.enqueue_trial({**self.space.uniform(scales), **self.fixed}, user_attrs=attrs)

    def _enqueue_block(self, study: optuna.Study, scales: tuple[float, ...], point: DesignPoint) -> None:
        study.enqueue_trial({**self.space.with_offsets(scales, point.offsets), **self.fixed},
                            user_attrs={STAGE_ATTR: BLOCK_STAGE, POINT_ATTR: point.label})

    def scale_trials(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE]

    def block_trials(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STAGE_ATTR) == BLOCK_STAGE]

    def _scales(self, trial: optuna.trial.FrozenTrial) -> tuple[float, ...]:
        """A scale trial's scales; a waiting one holds them as its fixed (enqueued) parameters."""
        fixed = trial.system_attrs.get("fixed_params") or {}
        return tuple(round(float(trial.params.get(name, fixed.get(name, math.nan))), 6) for name in self.space.scales)

    def tried(self, study: optuna.Study) -> list[tuple[tuple[float, ...], float]]:
        return [(self._scales(t), t.value) for t in self.scale_trials(study)
                if t.state == TrialState.COMPLETE and t.value is not None]

    def start(self, study: optuna.Study) -> None:
        """On a new study, by the worker that created it: the baselines and the design, as far as --n_trials goes."""
        self._top_up(study)

    def resume(self, study: optuna.Study) -> None:
        """When a run starts on a study that has finished trials: what the stages still miss (the rest of a design,
        when an earlier run's --n_trials stopped it), and each decision that an earlier run did not get to. A fresh
        study is left to its creator (``start``), so that workers starting together do not enqueue its points
        twice."""
        if not any(t.state in FINISHED for t in study.get_trials(deepcopy=False)):
            return
        self._refine(study, None)
        self._decide_blocks(study, None)
        self._decide_combination(study, None)
        self._top_up(study)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: when a stage's last trial has finished, decide and enqueue what follows it."""
        decided = self._refine(study, trial)
        decided |= self._decide_blocks(study, trial)
        decided |= self._decide_combination(study, trial)
        if decided:
            self._top_up(study)

    def _planned(self, study: optuna.Study) -> list[tuple[float, ...]]:
        return self.first_points() + [tuple(p) for p in study.user_attrs.get(REFINEMENT_ATTR) or []]

    def _planned_blocks(self, study: optuna.Study) -> tuple[tuple[float, ...], list[DesignPoint]]:
        """The block design's scales and points, the combination last (none before they are decided)."""
        decided = study.user_attrs.get(BLOCKS_ATTR)
        if not decided:
            return (), []
        points = [DesignPoint(label, offsets) for label, offsets in decided["points"]]
        combined = study.user_attrs.get(COMBINATION_ATTR)
        if combined:
            points.append(DesignPoint(*combined))
        return tuple(decided["scales"]), points

    @staticmethod
    def _all_finished(trials: list[optuna.trial.FrozenTrial], trial: optuna.trial.FrozenTrial | None) -> bool:
        """Every one of ``trials`` finished (or failed), and ``trial`` (the callback's) is the last of them to
        finish: with several workers exactly one decides what follows (all see the same finished trials once none
        is pending)."""
        if any(t.state not in (*FINISHED, TrialState.FAIL) for t in trials):
            return False
        if trial is not None and trials:
            last = max(trials, key=lambda t: (t.datetime_complete or datetime.min, t.number))
            return last.number == trial.number
        return True

    def _refine(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> bool:
        """Decide the refinement once the design has finished."""
        if REFINEMENT_ATTR in study.user_attrs:
            return False
        first = set(self.first_points())
        design = [t for t in self.scale_trials(study) if self._scales(t) in first]
        if {self._scales(t) for t in design} != first or not self._all_finished(design, trial):
            return False
        points = refinement(self.tried(study), self.space.weight_min, self.space.weight_max)
        study.set_user_attr(REFINEMENT_ATTR, [list(p) for p in points])
        if points:
            log.info("scale stage: best scale %s; refining with %s", self.best_scales(study),
                     ", ".join("(" + ", ".join(f"{v:g}" for v in p) + ")" for p in points))
        return True

    def _decide_blocks(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> bool:
        """Decide the block design once the whole scale stage (design and refinement) has finished."""
        if BLOCKS_ATTR in study.user_attrs or REFINEMENT_ATTR not in study.user_attrs:
            return False
        planned = set(self._planned(study))
        stage = [t for t in self.scale_trials(study) if self._scales(t) in planned]
        if {self._scales(t) for t in stage} != planned or not self._all_finished(stage, trial):
            return False
        scales = self.best_scales(study)
        points = block_design(self.blocks, dict(zip(self.space.owners, scales, strict=True)),
                              self.space.weight_min, self.space.weight_max)
        study.set_user_attr(BLOCKS_ATTR, {"scales": list(scales), "points": [[p.label, p.offsets] for p in points]})
        if points:
            log.info("shape stage: block design around scale %s: %s", scales, ", ".join(p.label for p in points))
        return True

    def _decide_combination(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> bool:
        """Decide the blocks' combination once every block-design trial has finished."""
        if COMBINATION_ATTR in study.user_attrs or BLOCKS_ATTR not in study.user_attrs:
            return False
        _scales, points = self._planned_blocks(study)
        labels = {p.label for p in points}
        design = [t for t in self.block_trials(study) if t.user_attrs.get(POINT_ATTR) in labels]
        if {t.user_attrs.get(POINT_ATTR) for t in design} != labels or not self._all_finished(design, trial):
            return False
        scores = {t.user_attrs[POINT_ATTR]: t.value for t in design
                  if t.state == TrialState.COMPLETE and t.value is not None}
        kept = max((value for _, value in self.tried(study)), default=-math.inf)
        combined = combination(points, scores, kept)
        study.set_user_attr(COMBINATION_ATTR, [combined.label, combined.offsets] if combined else None)
        if combined:
            log.info("shape stage: %s: %s", COMBINED, ", ".join(f"{n} {v:+g}" for n, v in combined.offsets.items()))
        return True

    def _top_up(self, study: optuna.Study) -> None:
        """Enqueue the planned points no trial holds yet, as many as the run's --n_trials leaves room for: the
        scale stage's first, then the block design's."""
        trials = study.get_trials(deepcopy=False)
        existing = {self._scales(t) for t in trials if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE}
        missing_scales = [p for p in self._planned(study) if p not in existing]
        labels = {t.user_attrs.get(POINT_ATTR) for t in trials if t.user_attrs.get(STAGE_ATTR) == BLOCK_STAGE}
        block_scales, points = self._planned_blocks(study)
        missing_points = [p for p in points if p.label not in labels]
        busy = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
        finished = sum(t.state in FINISHED for t in trials)
        room = self.n_trials - finished - busy if self.n_trials else len(missing_scales) + len(missing_points)
        for point in missing_scales[:max(room, 0)]:
            self._enqueue(study, point)
        room -= len(missing_scales)
        for point in missing_points[:max(room, 0)]:
            self._enqueue_block(study, block_scales, point)

    def best_scales(self, study: optuna.Study) -> tuple[float, ...]:
        """The scales of the best finished scale-stage trial (w = 1, clipped, before any has finished)."""
        tried = self.tried(study)
        if not tried:
            return tuple(_clip(1.0, self.space.weight_min, self.space.weight_max) for _ in self.space.scales)
        return max(tried, key=lambda item: item[1])[0]

    def shape_start(self, study: optuna.Study) -> dict[str, float]:
        """Where the shape sampler starts: the offsets of the design trial (scale stage and block design) with the
        highest search score; 0 everywhere (the best scale) when that is a scale trial. A start is no claim that
        the shape helps, so the plain highest score, not the stricter rule for the declared best
        (``search.selection``): the sampler begins its search where the design saw the most."""
        start = dict.fromkeys(self.space.shape.params, 0.0)
        design = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if t.user_attrs.get(STAGE_ATTR) in (SCALE_STAGE, BLOCK_STAGE) and t.value is not None]
        if not design:
            return start
        best = max(design, key=lambda t: t.value)
        if best.user_attrs.get(STAGE_ATTR) == BLOCK_STAGE and self._scales(best) == self.best_scales(study):
            start.update({name: float(best.params[name]) for name in start if name in best.params})
        return start


def shape_sampler(name: str, seed: int, space: ScaledSpace, start: dict[str, float]) -> optuna.samplers.BaseSampler:
    """The sampler of the shape stage's offsets: CMA-ES starts at ``start`` (the best design point) with the
    earlier defaults' step, 1/6 of the weight range; the others search the offsets' whole range."""
    import warnings

    import optuna

    if name == "CMA-ES":
        with warnings.catch_warnings():  # x0 is deprecated in Optuna 4.9+, still supported (see search.samplers)
            warnings.simplefilter("ignore")
            # Optuna's CMA-ES reads sigma0 on the parameters scaled to [0, 1]: the offsets' range is twice the
            # weight range, so a sixth of the weight range is 1/12 there
            return optuna.samplers.CmaEsSampler(x0=start, sigma0=OFFSET_STEP, seed=seed)
    low, high = offset_range(space.weight_min, space.weight_max)
    return make_sampler(name, seed, space.shape.params, low, high)


def scale_first_sampler(make_inner: Callable[[dict[str, float]], optuna.samplers.BaseSampler], stage: ScaleStage,
                        shape_distributions: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The run's sampler for the shape stage. Scale-stage and block-design trials are enqueued (their parameters
    are fixed); for every other trial the inner sampler searches the offsets (and densities) as one relative
    space, and each scale is the best scale-stage trial's. The inner sampler is made at the first such trial,
    from where the design ended (``make_inner(stage.shape_start(study))``)."""
    import optuna

    class ScaleFirstSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner: optuna.samplers.BaseSampler | None = None

        def _inner(self, study) -> optuna.samplers.BaseSampler:
            if self.inner is None:
                self.inner = make_inner(stage.shape_start(study))
            return self.inner

        def reseed_rng(self) -> None:
            if self.inner is not None:
                self.inner.reseed_rng()

        def infer_relative_search_space(self, study, trial):
            if trial.user_attrs.get(STAGE_ATTR) in (SCALE_STAGE, BLOCK_STAGE):
                return {}
            return dict(shape_distributions)

        def sample_relative(self, study, trial, search_space):
            if not search_space:
                return {}
            return self._inner(study).sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            if param_name in stage.space.scales:
                return stage.best_scales(study)[stage.space.scales.index(param_name)]
            return self._inner(study).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            if self.inner is not None:
                self.inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            if self.inner is not None:
                self.inner.after_trial(study, trial, state, values)

    return ScaleFirstSampler()


def shape_distributions(space: ScaledSpace, stepped: dict[str, tuple[float, float, float]] | None = None):
    """Optuna distributions of the shape stage's relative space: every offset, then the densities."""
    from optuna.distributions import FloatDistribution

    out = {name: FloatDistribution(*offset_range(space.weight_min, space.weight_max)) for name in space.shape.params}
    for name, (low, high, step) in (stepped or {}).items():
        out[name] = FloatDistribution(low, high, step=step)
    return out


def planned_space(groups: list[str], n_vectors: int, mode: str, n_knots: int, scale_first: bool, weight_min: float,
                  weight_max: float) -> SearchSpace | ScaledSpace:
    """The space a run will search, from the groups of one vector (the --dry_run plan, before any weight loads):
    with several vectors each group is named per vector, as the merger names it ("v2/layer_07",
    "expert2/v2/layer_07")."""
    if n_vectors > 1:
        groups = [owned(owned(owner_of(g), f"v{i + 1}"), local_name(g)) for i in range(n_vectors) for g in groups]
    shape = search_space(groups, mode, n_knots)
    return ScaledSpace(shape, weight_min, weight_max) if scale_first else shape
