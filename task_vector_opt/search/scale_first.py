"""Scale first, then the shape: the default search.

A chat vector that is too strong for its target can have its best uniform weight at 0.1, where a search that
starts at w = 1 never looks. So the search runs in two stages over one parameter set:

1. **Scale.** One uniform weight per task vector (``scale``; ``scale/v1``, ``scale/v2``, ... with several),
   tried on a fixed design that spans the whole --weight_min..--weight_max range (values near both ends and 0
   included), then refined once around the best design point. These trials are enqueued (Optuna's own queue),
   so several workers share them and a resumed study continues where it stopped.
2. **Shape.** The shape parameters (profile knots, or one per group) become *factors* of the scale found:
   weight = clip(scale_v * factor, weight_min, weight_max), each factor in [0, 2]. The run's sampler
   (CMA-ES by default, starting at factor 1: exactly the best scale) searches the factors; the scale stays
   at the best scale-stage trial's.

A scale-stage trial proposes factor 1 everywhere, so its weights are exactly uniform per vector. A trial's
parameters alone give its weights (``ScaledSpace.weights``): the report, the holdout and --finalize need
nothing else.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from optuna.trial import TrialState

from task_vector_opt.search.space import SearchSpace, local_name, owned, owner_of, search_space
from task_vector_opt.search.study import BASELINES, FINISHED

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

FACTOR_RANGE = (0.0, 2.0)  # shape factors: the sampler's middle (CMA-ES's start) is 1, the scale itself
STAGE_ATTR = "stage"  # trial user attr: "scale" for the scale stage's trials (baselines included)
SCALE_STAGE = "scale"
REFINEMENT_ATTR = "scale_stage_refinement"  # study user attr: the refinement's points, once the design has finished
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


@dataclass(frozen=True)
class ScaledSpace:
    """A shape space (its parameters read as factors) times one scale per owner: per vector, per MoE expert."""

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
        return {**dict.fromkeys(self.scales, (weight_min, weight_max)), **dict.fromkeys(self.shape.params, FACTOR_RANGE)}

    def weights(self, params: dict[str, float]) -> dict[str, float]:
        """Every group's weight: its owner's scale times the shape's factor for it, clipped to the range;
        other parameters (densities) pass through."""
        factors = self.shape.weights({name: value for name, value in params.items() if name not in self.scales})
        groups = set(self.groups)
        weights = {}
        for name, factor in factors.items():
            if name in groups:
                value = float(params[scale_name(owner_of(name))]) * factor
                weights[name] = min(max(value, self.weight_min), self.weight_max)
            else:
                weights[name] = factor
        return weights

    def uniform(self, scales: tuple[float, ...]) -> dict[str, float]:
        """The parameters of a scale-stage trial: these scales, every factor 1."""
        return {**dict(zip(self.scales, scales, strict=True)), **dict.fromkeys(self.shape.params, 1.0)}


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
    """Enqueues the scale stage's trials and tells which scale the shape stage uses.

    The stage's points are the baselines (w = 1, then w = 0), the design, then the refinement around the best
    design point (computed once, when every design trial has finished, and kept in the study). They are enqueued
    a few at a time, never more than the run's --n_trials leaves room for, so a study stopped at its budget holds
    no waiting trials, and a rerun with more trials goes on in the stage where it stopped."""

    def __init__(self, space: ScaledSpace, baselines: bool, fixed: dict[str, float] | None = None,
                 n_trials: int = 0):
        self.space = space
        self.baselines = baselines
        self.fixed = fixed or {}  # parameters every scale trial shares (the densities of a sparsifying merge)
        self.n_trials = n_trials

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

    def scale_trials(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE]

    def _scales(self, trial: optuna.trial.FrozenTrial) -> tuple[float, ...]:
        """A scale trial's scales; a waiting one holds them as its fixed (enqueued) parameters."""
        fixed = trial.system_attrs.get("fixed_params") or {}
        return tuple(round(float(trial.params.get(name, fixed.get(name, math.nan))), 6) for name in self.space.scales)

    def tried(self, study: optuna.Study) -> list[tuple[tuple[float, ...], float]]:
        return [(self._scales(t), t.value) for t in self.scale_trials(study)
                if t.state == TrialState.COMPLETE and t.value is not None]

    def start(self, study: optuna.Study) -> None:
        """On a new study, by the worker that created it: the baselines and the design, as far as --n_trials goes."""
        self._top_up(study, self.first_points())

    def resume(self, study: optuna.Study) -> None:
        """When a run starts on a study that has finished trials: what the stage still misses (the rest of the
        design or of the refinement, when an earlier run's --n_trials stopped it), and the refinement itself when
        the design finished without it. A fresh study is left to its creator (``start``), so that workers starting
        together do not enqueue its points twice."""
        if not any(t.state in FINISHED for t in study.get_trials(deepcopy=False)):
            return
        self._refine(study, None)
        self._top_up(study, self._planned(study))

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback: when the design's last trial has finished, decide and enqueue the refinement."""
        if self._refine(study, trial):
            self._top_up(study, self._planned(study))

    def _planned(self, study: optuna.Study) -> list[tuple[float, ...]]:
        return self.first_points() + [tuple(p) for p in study.user_attrs.get(REFINEMENT_ATTR) or []]

    def _refine(self, study: optuna.Study, trial: optuna.trial.FrozenTrial | None) -> bool:
        """Decide the refinement once the design has finished. With several workers exactly one decides: the one
        whose design trial finished last (all see the same finished trials once none is pending)."""
        if REFINEMENT_ATTR in study.user_attrs:
            return False
        first = set(self.first_points())
        design = [t for t in self.scale_trials(study) if self._scales(t) in first]
        if {self._scales(t) for t in design} != first or any(t.state not in (*FINISHED, TrialState.FAIL)
                                                             for t in design):
            return False
        if trial is not None:
            last = max(design, key=lambda t: (t.datetime_complete or datetime.min, t.number))
            if last.number != trial.number:
                return False
        points = refinement(self.tried(study), self.space.weight_min, self.space.weight_max)
        study.set_user_attr(REFINEMENT_ATTR, [list(p) for p in points])
        if points:
            log.info("scale stage: best scale %s; refining with %s", self.best_scales(study),
                     ", ".join("(" + ", ".join(f"{v:g}" for v in p) + ")" for p in points))
        return True

    def _top_up(self, study: optuna.Study, planned: list[tuple[float, ...]]) -> None:
        """Enqueue the planned points no trial holds yet, as many as the run's --n_trials leaves room for."""
        trials = study.get_trials(deepcopy=False)
        existing = {self._scales(t) for t in trials if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE}
        missing = [p for p in planned if p not in existing]
        busy = sum(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)
        finished = sum(t.state in FINISHED for t in trials)
        room = self.n_trials - finished - busy if self.n_trials else len(missing)
        for point in missing[:max(room, 0)]:
            self._enqueue(study, point)

    def best_scales(self, study: optuna.Study) -> tuple[float, ...]:
        """The scales of the best finished scale-stage trial (w = 1, clipped, before any has finished)."""
        tried = self.tried(study)
        if not tried:
            return tuple(_clip(1.0, self.space.weight_min, self.space.weight_max) for _ in self.space.scales)
        return max(tried, key=lambda item: item[1])[0]


def scale_first_sampler(inner: optuna.samplers.BaseSampler, stage: ScaleStage,
                        shape_distributions: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """The run's sampler for the shape stage. Scale-stage trials are enqueued (their parameters are fixed); for
    every other trial the inner sampler searches the factors (and densities) as one relative space, and each
    scale is the best scale-stage trial's."""
    import optuna

    class ScaleFirstSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = inner

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

        def infer_relative_search_space(self, study, trial):
            if trial.user_attrs.get(STAGE_ATTR) == SCALE_STAGE:
                return {}
            return dict(shape_distributions)

        def sample_relative(self, study, trial, search_space):
            if not search_space:
                return {}
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            if param_name in stage.space.scales:
                return stage.best_scales(study)[stage.space.scales.index(param_name)]
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            self.inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self.inner.after_trial(study, trial, state, values)

    return ScaleFirstSampler()


def shape_distributions(space: ScaledSpace, stepped: dict[str, tuple[float, float, float]] | None = None):
    """Optuna distributions of the shape stage's relative space: every factor, then the densities."""
    from optuna.distributions import FloatDistribution

    out = {name: FloatDistribution(*FACTOR_RANGE) for name in space.shape.params}
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
