"""The run loop every script shares: prepare the workspace (merging.workspace) -> Optuna search -> holdout -> save.

A pipeline supplies only its flags and its evaluator. What the loop writes is made by the output stage (the recipe in
outputs.recipe, the console summary in outputs.result).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import optuna

from task_vector_opt.run_config import RunConfig
from task_vector_opt.evaluation.finite import NonFiniteLogits, finite_logits_guard
from task_vector_opt.evaluation.protocol import Evaluator, Score
from task_vector_opt.merging.merger import Merger
from task_vector_opt.merging.models import save_model
from task_vector_opt.merging.workspace import Workspace, prepare
from task_vector_opt.outputs.recipe import recipe
from task_vector_opt.outputs.result import RunResult
from task_vector_opt.outputs.side_files import run_outputs
from task_vector_opt.search.study import (FINISHED, finished_trials, make_objective, open_storage, open_study, recover_dead_workers,
                     redact, run_search)
from task_vector_opt.errors import UsageError
from task_vector_opt.study_attrs import (BASELINE_ATTR, HOLDOUT_PARTS_ATTR, IDENTITY_ATTR, INPUTS_ATTR,
                                         ITEM_VALUES_ATTR, ITEMS_SCORED_ATTR, VERDICT_ATTR)
from task_vector_opt.search.samplers import make_sampler
from task_vector_opt.search.scale_first import ScaledSpace, ScaleStage, scale_first_sampler, shape_distributions, shape_sampler
from task_vector_opt.search.selection import chosen_trial
from task_vector_opt.search.space import SearchSpace, search_space
from task_vector_opt.search.verdict import holdout_verdict

log = logging.getLogger(__name__)

EvaluatorFactory = Callable[[RunConfig], Evaluator]


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # The engine logs each trial itself (score, timing, the reason a trial failed); Optuna's own per-trial
    # warnings would repeat those with a traceback, also for a Ctrl-C.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # The judge SDKs' HTTP clients log every request at INFO: a line per judgment, and one before a probe's error.
    for client in ("httpx", "httpx2"):
        logging.getLogger(client).setLevel(max(logging.WARNING, logging.getLogger().level))


def baseline_values(study: optuna.Study) -> dict[str, float]:
    return {t.user_attrs[BASELINE_ATTR]: t.value for t in study.get_trials(deepcopy=False, states=FINISHED)
            if BASELINE_ATTR in t.user_attrs and t.value is not None}


Preparer = Callable[[RunConfig], Workspace]


def run(config: RunConfig, make_evaluator: EvaluatorFactory, prepare_workspace: Preparer = prepare,
        callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = ()) -> RunResult:
    """Run (or resume) one optimization end to end and save the best model with its report.

    ``--search_only`` workers stop after the search (several may share one study); ``--finalize``
    skips the search and saves the best trial of the study as it is. ``callbacks`` are called after
    each trial (e.g. experiment tracking).
    """
    config.run_dir.mkdir(parents=True, exist_ok=True)
    storage = open_storage(config.storage, config.heartbeat_interval)
    # Tasks / questions / judges are built once, before the models load; an API judge is probed here, so a bad
    # key is one error line (no log line before it).
    evaluator = make_evaluator(config)
    log.info("study %s in %s", config.study_name, redact(config.storage))
    ws = prepare_workspace(config)
    evaluator.follow(ws.merger)  # a backend with its own copy of the weights (vLLM) pushes what merges rewrite

    space = space_of(config, ws)
    study = open_search_study(config, storage, ws, evaluator, space)
    if not config.finalize:
        search(config, study, ws, evaluator, callbacks, space)
    if config.search_only:
        log.info("--search_only: this worker is done; save the model with the same command and --finalize")
        return result_of(config, study, space)
    result = result_of(config, study, space)
    candidates = holdout_candidates(study, space, config.holdout_top_k, ws.baseline_fixed())
    outcomes = score_holdout(ws.merger, evaluator, ws.model, ws.tokenizer, candidates)
    result.holdout = {label: outcome.value for label, outcome in outcomes.items()}
    result.holdout_parts = {label: outcome.parts for label, outcome in outcomes.items() if outcome.parts}
    best_label = label_of(candidates, result.best_weights)
    if best_label in result.holdout:
        result.holdout["best"] = result.holdout[best_label]
        if best_label in result.holdout_parts:
            result.holdout_parts["best"] = result.holdout_parts[best_label]
        result.verdict = holdout_verdict({label: o.item_values for label, o in outcomes.items()}, best_label)
        study.set_user_attr(VERDICT_ATTR, result.verdict)  # the report and a later `report` command show it
    if result.holdout_parts:
        study.set_user_attr(HOLDOUT_PARTS_ATTR, result.holdout_parts)
    save_best(config, ws, study, result)
    return result


def space_of(config: RunConfig, ws: Workspace) -> SearchSpace | ScaledSpace:
    """What the sampler proposes for this run's groups (profile mode: knots; --scale_search: scales, then the
    shape's parameters as offsets from them)."""
    try:
        shape = search_space(ws.group_order, config.optimize_mode, config.profile_knots)
    except ValueError as exc:  # validation checks config.json; this catches a model whose config did not say
        raise UsageError("--profile_knots", str(exc).split(": ", 1)[-1]) from None
    if not config.scale_first:
        return shape
    return ScaledSpace(shape, config.weight_min, config.weight_max)


def scale_stage_of(config: RunConfig, ws: Workspace, space: SearchSpace | ScaledSpace) -> ScaleStage | None:
    if not isinstance(space, ScaledSpace):
        return None
    return ScaleStage(space, config.baseline_trials, ws.baseline_fixed(), config.n_trials)


def open_search_study(config: RunConfig, storage: optuna.storages.BaseStorage, ws: Workspace, evaluator: Evaluator,
                      space: SearchSpace | ScaledSpace) -> optuna.Study:
    """Create (with its first trials) or load the run's study, with the sampler of its search space."""
    stage = scale_stage_of(config, ws, space)

    def sampler(seed: int) -> optuna.samplers.BaseSampler:
        if stage is None:
            return make_sampler(config.sampler, seed, space.params, config.weight_min, config.weight_max)
        return scale_first_sampler(lambda start: shape_sampler(config.sampler, seed, space, start), stage,
                                   shape_distributions(space, ws.densities))

    first_trials = config.baseline_trials and not config.finalize
    # the scale stage's first trials (the baselines among them) are enqueued by whichever worker creates the study
    return open_study(storage, config.study_name, sampler, config.seed, evaluator.pruner,
                      space.params if first_trials and stage is None else None, ws.baseline_fixed(),
                      stage.start if stage is not None and not config.finalize else None)


def search(config: RunConfig, study: optuna.Study, ws: Workspace, evaluator: Evaluator,
           callbacks: Sequence[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = (),
           space: SearchSpace | ScaledSpace | None = None,
           done: Callable[[optuna.Study], bool] | None = None) -> None:
    """Trials until the study has ``n_trials`` finished ones (or ``done``, a benchmark's budget, says so);
    Ctrl-C optionally saves the best so far."""
    study.set_user_attr(INPUTS_ATTR, config.recipe_inputs())
    # What defines the study: a later run of the same models that differs in it is told what differs
    # (search.existing.related_study_note).
    study.set_user_attr(IDENTITY_ATTR, config.study_identity())
    recover_dead_workers(study)
    already = finished_trials(study)
    if already:
        log.info("resuming: %d of %d trials already finished", already, config.n_trials)

    space = space or space_of(config, ws)
    stage = scale_stage_of(config, ws, space)
    if stage is not None:
        stage.resume(study)  # a study stopped in the scale stage goes on from there
        callbacks = [stage.after_trial, *callbacks]

    def score(weights: dict[str, float], trial: optuna.Trial) -> tuple[float, dict]:
        ws.merger.apply(weights)
        with finite_logits_guard(ws.model):  # NaN/inf logits fail the trial (make_objective records why)
            result = evaluator.score(ws.model, ws.tokenizer, trial)
        items = {ITEMS_SCORED_ATTR: result.items_scored} if result.items_scored else {}
        if stage is not None and result.item_values:  # what the rule for the best trial pairs (search.selection)
            items[ITEM_VALUES_ATTR] = result.item_values
        return result.value, {**result.details, **items, **result.trial_attrs}

    try:
        run_search(study, config.n_trials,
                   make_objective(space.params, config.weight_min, config.weight_max, score,
                                  space.weights if space.derives_weights else None, ws.densities,
                                  space.ranges(config.weight_min, config.weight_max)), callbacks, done)
    except BaseException as exc:
        if not ctrl_c_behind(exc):
            raise
        if config.save_on_interrupt and completed(study):
            log.warning("interrupted: saving the best trial so far (--save_on_interrupt); Ctrl-C again to abandon")
            save_best(config, ws, study, result_of(config, study, space))
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from exc


def ctrl_c_behind(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a Ctrl-C, or an error raised while one was being handled: a Ctrl-C that lands inside
    Optuna's own bookkeeping of a trial (its storage write) comes out as that code's next error, with the
    KeyboardInterrupt as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def completed(study: optuna.Study) -> bool:
    """Whether the study has a completed trial. Read once more when the first read fails: a Ctrl-C that lands
    inside a storage write leaves the session's transaction broken, and the failed read rolls it back."""
    for attempt in range(2):
        try:
            return bool(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        except optuna.exceptions.StorageInternalError:
            if attempt:
                raise
    return False


def items_scored(study: optuna.Study) -> int:
    """Search items scored by all finished trials: a pruned trial counts only the items it scored."""
    return sum(int(t.user_attrs.get(ITEMS_SCORED_ATTR, 0)) for t in study.get_trials(deepcopy=False, states=FINISHED))


def result_of(config: RunConfig, study: optuna.Study, space: SearchSpace | ScaledSpace | None = None) -> RunResult:
    best = chosen_trial(study.get_trials(deepcopy=False))
    weights = space.weights(best.params) if space is not None else dict(best.params)
    return RunResult(config.study_name, best.value, best.number, weights, best_params=dict(best.params),
                     search_baselines=baseline_values(study), items_scored=items_scored(study))


def save_best(config: RunConfig, ws: Workspace, study: optuna.Study, result: RunResult) -> None:
    """The best weights into the live model, then the model, recipe, report, card and mergekit YAML in one
    atomic save."""
    ws.merger.apply(result.best_weights)
    merge_recipe = recipe(config, result, ws.n_tensors)
    side_files = run_outputs(study, result.holdout, merge_recipe, ws.model, ws.merger)  # report, card, mergekit
    if ws.save is not None:  # e.g. the MoE: each expert to <output_dir>-N, the report beside the first
        result.output_dir = ws.save(config, merge_recipe, side_files)
    else:
        result.output_dir = save_model(ws.model, ws.tokenizer, config.output_dir, config.overwrite_output_dir,
                                       {"merge_recipe.json": merge_recipe, **side_files})
    result.n_trials, result.n_failed = finished_trials(study), len(study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,)))
    result.files = sorted(["merge_recipe.json", *side_files])


def holdout_candidates(study: optuna.Study, space: SearchSpace | ScaledSpace | list[str], top_k: int,
                       fixed: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """The target (w=0), plain addition (w=1), the declared best trial (``search.selection``) and the top-k trials
    by search score, as the merger's weights per group.

    A trial whose weights equal an earlier candidate's is scored once, under the earlier label. ``fixed``: the
    baselines' other parameters (densities).
    """
    if isinstance(space, list):  # a plain list of groups: the weights are the params
        space = SearchSpace(list(space), list(space))
    fixed = fixed or {}
    candidates = {"w=0": {**dict.fromkeys(space.groups, 0.0), **fixed},
                  "w=1": {**dict.fromkeys(space.groups, 1.0), **fixed}}
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted(trials, key=lambda t: t.value, reverse=True)[:top_k]
    if trials:
        chosen = chosen_trial(trials)
        ranked = [chosen, *(t for t in ranked if t.number != chosen.number)]
    for trial in ranked:
        weights = space.weights(trial.params)
        if weights not in candidates.values():
            candidates[f"trial {trial.number}"] = weights
    return candidates


def label_of(candidates: dict[str, dict[str, float]], weights: dict[str, float]) -> str:
    return next(label for label, candidate in candidates.items() if candidate == weights)


def score_holdout(merger: Merger, evaluator: Evaluator, model, tokenizer,
                  candidates: dict[str, dict[str, float]]) -> dict[str, Score]:
    """Held-out scores of each candidate (never pruned): items never used by the search, so overfitting shows.

    A candidate whose model gives non-finite logits or a non-finite score gets no held-out score (a warning
    says why); the others are still scored."""
    scores: dict[str, Score] = {}
    for label, weights in candidates.items():
        merger.apply(weights)
        try:
            with finite_logits_guard(model):
                outcome = evaluator.holdout(model, tokenizer)
        except NonFiniteLogits as exc:
            log.warning("holdout %s: %s; it gets no held-out score", label, exc)
            continue
        if outcome is None:
            return {}
        if not math.isfinite(outcome.value):
            log.warning("holdout %s: the score is %s; it gets no held-out score", label, outcome.value)
            continue
        scores[label] = outcome
        log.info("holdout %s: %.4f", label, outcome.value)
    return scores
