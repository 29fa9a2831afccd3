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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from task_vector_opt.search.space import SearchSpace, local_name, owned, owner_of, search_space

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

FACTOR_RANGE = (0.0, 2.0)  # shape factors: the sampler's middle (CMA-ES's start) is 1, the scale itself
STAGE_ATTR = "stage"  # trial user attr: "scale" for the scale stage's trials (baselines included)
SCALE_STAGE = "scale"
REFINED_ATTR = "scale_stage_refined"  # study user attr: the refinement points were enqueued
# The design's uniform weights, as fractions of the range above max(--weight_min, 0) (one vector): 0.25, 0.5, 0.1 and 2.0 for the
# default range, beside the baselines' 1 and 0. Near 0 and at the top end, so a vector far too strong
# (best near 0.1) or too weak (best near 2) is found as surely as one close to plain addition.
ONE_VECTOR_FRACTIONS = (0.125, 0.25, 0.05, 1.0)
# Two vectors: both together at these fractions (the top end included), and each one alone (the other dropped)
# at 1 and 0.5. With more
# scales than two (the experts of a MoE) the one-vector design is used for all of them together; the refinement
# then moves each scale on its own.
SEVERAL_VECTORS_FRACTIONS = (0.125, 0.25, 1.0)
NEGATIVE_FRACTIONS = (0.25, 1.0)  # of --weight_min, when the range goes below 0


def scale_name(owner: str) -> str:
    """The scale parameter of an owner: "scale" (one vector), "scale/v2", "scale/expert2" (MoE)."""
    return f"scale/{owner}" if owner else "scale"


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
    """Enqueues the scale stage's trials and tells which scale the shape stage uses."""

    def __init__(self, space: ScaledSpace, baselines: bool, fixed: dict[str, float] | None = None):
        self.space = space
        self.baselines = baselines
        self.fixed = fixed or {}  # parameters every scale trial shares (the densities of a sparsifying merge)

    def _enqueue(self, study: optuna.Study, scales: tuple[float, ...], label: str | None = None) -> None:
        attrs: dict[str, Any] = {STAGE_ATTR: SCALE_STAGE}
        if label is not None:
            attrs["baseline"] = label
        study.enqueue_trial({**self.space.uniform(scales), **self.fixed}, user_attrs=attrs)

    def start(self, study: optuna.Study) -> None:
        """On a new study only: the baselines (w=1, then w=0) and the design, as the first trials."""
        from task_vector_opt.search.study import BASELINES

        if study.get_trials(deepcopy=False):
            return
        n = self.space.n_vectors
        if self.baselines:
            for label, value in BASELINES:
                self._enqueue(study, (value,) * n, label)
        else:  # the stage still needs the two ends of plain addition
            for _label, value in BASELINES:
                self._enqueue(study, (_clip(value, self.space.weight_min, self.space.weight_max),) * n)
        for point in design(n, self.space.weight_min, self.space.weight_max):
            self._enqueue(study, point)

    def scale_trials(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STAGE_ATTR) == SCALE_STAGE]

    def tried(self, study: optuna.Study) -> list[tuple[tuple[float, ...], float]]:
        from optuna.trial import TrialState

        return [(tuple(round(t.params[name], 6) for name in self.space.scales), t.value)
                for t in self.scale_trials(study) if t.state == TrialState.COMPLETE and t.value is not None]

    def advance(self, study: optuna.Study, _trial: Any = None) -> None:
        """Optuna callback (also called when a run starts): once every design trial has finished, enqueue the
        refinement points, once per study."""
        from optuna.trial import TrialState

        if study.user_attrs.get(REFINED_ATTR):
            return
        trials = self.scale_trials(study)
        if not trials or any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials):
            return
        study.set_user_attr(REFINED_ATTR, True)
        points = refinement(self.tried(study), self.space.weight_min, self.space.weight_max)
        for point in points:
            self._enqueue(study, point)
        if points:
            log.info("scale stage: best so far %s; refining with %s", self.best_scales(study),
                     ", ".join("(" + ", ".join(f"{v:g}" for v in p) + ")" for p in points))

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


def scale_trial_count(n_vectors: int, weight_min: float, weight_max: float) -> int:
    """Trials of the scale stage before its refinement (for the plan and the docs)."""
    return 2 + len(design(n_vectors, weight_min, weight_max))



def planned_space(groups: list[str], n_vectors: int, mode: str, n_knots: int, scale_first: bool, weight_min: float,
                  weight_max: float) -> SearchSpace | ScaledSpace:
    """The space a run will search, from the groups of one vector (the --dry_run plan, before any weight loads):
    with several vectors each group is named per vector, as the merger names it ("v2/layer_07",
    "expert2/v2/layer_07")."""
    if n_vectors > 1:
        groups = [owned(owned(owner_of(g), f"v{i + 1}"), local_name(g)) for i in range(n_vectors) for g in groups]
    shape = search_space(groups, mode, n_knots)
    return ScaledSpace(shape, weight_min, weight_max) if scale_first else shape
