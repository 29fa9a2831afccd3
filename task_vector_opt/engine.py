"""The engine every script shares: load -> task vector -> merger -> Optuna search -> holdout -> save.

A pipeline supplies only its flags and its evaluator; everything else is here.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import torch

from task_vector_opt import __version__
from task_vector_opt.run_config import RunConfig
from task_vector_opt.evaluation.finite import NonFiniteLogits, finite_logits_guard
from task_vector_opt.evaluation.protocol import Evaluator, Score
from task_vector_opt.merging.grouping import group_names, ordered_groups
from task_vector_opt.merging.merger import HOST_RESERVE, Merger, gpu_share
from task_vector_opt.merging.methods import DENSITY_STEP
from task_vector_opt.merging.models import DTYPES, load_model, resolve, resolve_config, save_model
from task_vector_opt.outputs.search_text import search_sentence
from task_vector_opt.outputs.side_files import run_outputs
from task_vector_opt.search.study import (FINISHED, finished_trials, make_objective, open_storage, open_study, recover_dead_workers,
                     redact, run_search)
from task_vector_opt.merging.task_vector import build_task_vector
from task_vector_opt.merging.workspace import Workspace
from task_vector_opt.errors import UsageError
from task_vector_opt.search.existing import IDENTITY_ATTR, INPUTS_ATTR
from task_vector_opt.search.samplers import make_sampler
from task_vector_opt.search.scale_first import (ScaledSpace, ScaleStage, is_scale_name, planned_space,
                                                scale_first_sampler, shape_distributions, shape_sampler)
from task_vector_opt.search.selection import ITEM_VALUES_ATTR, chosen_trial
from task_vector_opt.search.space import SearchSpace, search_space
from task_vector_opt.search.verdict import holdout_verdict

log = logging.getLogger(__name__)

EvaluatorFactory = Callable[[RunConfig], Evaluator]


@dataclass
class RunResult:
    study_name: str
    best_value: float
    best_trial: int
    best_weights: dict[str, float]  # per merger group (profile mode: the interpolated layer weights)
    best_params: dict[str, float] = field(default_factory=dict)  # what the sampler proposed (profile: knots)
    holdout: dict[str, float | None] = field(default_factory=dict)
    holdout_parts: dict[str, dict[str, float]] = field(default_factory=dict)  # per candidate: each task's score
    verdict: dict[str, Any] = field(default_factory=dict)  # paired held-out differences vs w=1 and w=0
    items_scored: int = 0  # search items scored over all finished trials (pruned ones count what they scored)
    search_baselines: dict[str, float] = field(default_factory=dict)
    output_dir: Path | None = None
    n_trials: int = 0  # finished (complete + pruned)
    n_failed: int = 0
    files: list[str] = field(default_factory=list)  # side files saved beside the model


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # The engine logs each trial itself (score, timing, the reason a trial failed); Optuna's own per-trial
    # warnings would repeat those with a traceback, also for a Ctrl-C.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # The judge SDKs' HTTP clients log every request at INFO: a line per judgment, and one before a probe's error.
    for client in ("httpx", "httpx2"):
        logging.getLogger(client).setLevel(max(logging.WARNING, logging.getLogger().level))


def choose_store_device(config: RunConfig, model_bytes: int) -> str:
    """Where the target copy and the task vectors live (see docs/en/hardware.md)."""
    if config.vector_placement == "cpu":
        return "cpu"
    if config.vector_placement == "device" or not config.device.startswith("cuda"):
        return config.device
    copies = 1 + max(len(config.tuned_models), 1)  # the target's originals and one copy per task vector
    free, total = torch.cuda.mem_get_info(torch.device(config.device))
    free -= gpu_share(config.evaluator) * total  # --generation_backend vllm: the engine's share, taken later
    fits = free > (copies + HOST_RESERVE) * model_bytes
    log.info("vector placement auto: %.1f GiB free on %s, copies need %.1f GiB -> %s", free / 2**30, config.device,
             copies * model_bytes / 2**30, "device" if fits else "cpu")
    return config.device if fits else "cpu"


def baseline_values(study: optuna.Study) -> dict[str, float]:
    return {t.user_attrs["baseline"]: t.value for t in study.get_trials(deepcopy=False, states=FINISHED)
            if "baseline" in t.user_attrs and t.value is not None}


def prepare(config: RunConfig) -> Workspace:
    """Load the target, build each task vector tuned_i - base (streamed) and the merger."""
    started = time.perf_counter()
    target_dir = resolve(config.targets[0], config.cache_dir, config.allow_pickle)
    base_dir = resolve(config.base, config.cache_dir, config.allow_pickle)
    tuned_dirs = [resolve(t, config.cache_dir, config.allow_pickle) for t in config.tuned_models or [config.tuned]]
    model, tokenizer = load_model(target_dir, config.dtype, config.device, config.trust_remote_code,
                                  config.allow_pickle, config.targets[0].flag)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    store_device = choose_store_device(config, model_bytes)
    vectors = [build_task_vector(model, base_dir, tuned_dir, dtype=DTYPES[config.dtype], store_device=store_device,
                                 skip_embed=config.skip_embed) for tuned_dir in tuned_dirs]
    groups = group_names(list(vectors[0]), config.optimize_mode)
    merger = Merger(model, vectors, groups, store_device, config.merge)
    group_order = merger.weight_names()
    densities = density_ranges(merger, config)
    log.info("loaded in %.1fs: %d tensors, %d vector(s), %d weights + %d densities (%s mode, %s), copies on %s "
             "(%.2f GiB)", time.perf_counter() - started, len(vectors[0]), len(vectors), len(group_order),
             len(densities), config.optimize_mode, merger.settings.method, store_device,
             merger.stored_bytes() / 2**30)
    return Workspace(model, tokenizer, merger, group_order, len(vectors[0]), densities=densities)


def density_ranges(merger: Merger, config: RunConfig) -> dict[str, tuple[float, float, float]]:
    """{density parameter: (low, high, step)} of a sparsifying merge; empty under task arithmetic."""
    settings = merger.settings
    return {name: (settings.density_min, settings.density_max, DENSITY_STEP) for name in merger.density_names()}


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
        study.set_user_attr("verdict", result.verdict)  # the report and a later `report` command show it
    if result.holdout_parts:
        study.set_user_attr("holdout_parts", result.holdout_parts)
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
        items = {"items_scored": result.items_scored} if result.items_scored else {}
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
    return sum(int(t.user_attrs.get("items_scored", 0)) for t in study.get_trials(deepcopy=False, states=FINISHED))


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


def recipe(config: RunConfig, result: RunResult, n_tensors: int) -> dict[str, Any]:
    """merge_recipe.json: enough to understand and reproduce the merge."""
    inputs = config.recipe_inputs()
    return {
        "tool": f"task_vector_opt {__version__}",
        "formula": formula(config),
        "inputs": inputs,
        **({"search": how} if (how := search_sentence(inputs)) else {}),
        "study": {"name": config.study_name, "storage": redact(config.storage), "n_trials": config.n_trials},
        "best": {"trial": result.best_trial, "score": result.best_value},
        "baselines_search_score": result.search_baselines,
        "holdout_score": result.holdout,
        **({"holdout_score_per_task": result.holdout_parts} if result.holdout_parts else {}),
        "holdout_verdict": result.verdict,
        "items_scored": result.items_scored,
        "tensors": n_tensors,
        **search_parameters(config, result),
        "weights": result.best_weights,
    }


def search_parameters(config: RunConfig, result: RunResult) -> dict[str, Any]:
    """What the sampler proposed for the best trial, where it is not the weights themselves: the scales and the
    shape's offsets of --scale_search, or the knot weights of profile mode."""
    if config.scale_first:
        scales = {k: v for k, v in result.best_params.items() if is_scale_name(k)}
        offsets = {k: v for k, v in result.best_params.items() if k not in scales and not k.startswith("density/")}
        return {"scale_search": {"scales": scales, "offsets": offsets,
                                 "rule": "weight = clip(scale of its vector + offset, weight_min, weight_max)"}}
    if config.optimize_mode == "profile":
        return {"profile_knots": {k: v for k, v in result.best_params.items() if k.startswith("knot_")}}
    return {}


def formula(config: RunConfig) -> str:
    """The merge in one line, as the recipe and the model card state it."""
    merge = config.merge
    n_vectors = len(config.tuned_models) or 1
    if n_vectors == 1 and (merge is None or not (merge.sparsifies or merge.normalize)):
        return "target + weight * (tuned - base)"
    sparsified = "" if merge is None or not merge.sparsifies else f"{merge.method} sparsified, "
    return (f"target + sum_i weight_i * S(tuned_i - base) ({sparsified}{n_vectors} vector(s)"
            + (", normalized by the sum of the weights" if merge is not None and merge.normalize else "") + ")")


def summary_table(result: RunResult) -> str:
    """The scores of w=0, w=1 and the best trial side by side: search and held-out, and on held-out items each
    task's score when several are weighed together (what the vector gains on one skill and costs on another)."""
    rows = [(label, value, label.split(" ", 1)[0]) for label, value in sorted(result.search_baselines.items())]
    rows.append((f"best (trial {result.best_trial})", result.best_value, "best"))
    parts = list(dict.fromkeys(name for key in ("w=0", "w=1", "best")
                               for name in result.holdout_parts.get(key, {})))
    width = max(len(r[0]) for r in rows)
    columns = [max(8, len(name)) for name in parts]
    header = "".join(f"  {name:>{w}}" for name, w in zip(parts, columns))
    lines = [f"  {'merge':<{width}}  {'search':>8}  {'held-out':>8}{header}"]
    for label, search, key in rows:
        held = result.holdout.get(key)
        cells = "".join(f"  {_cell(result.holdout_parts.get(key, {}).get(name)):>{w}}"
                        for name, w in zip(parts, columns))
        lines.append(f"  {label:<{width}}  {search:>8.4f}  {_cell(held):>8}{cells}")
    if parts:
        lines.append(f"  ({', '.join(parts)}: each task's score on its held-out items)")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def print_summary(result: RunResult) -> None:
    lines = ["", "=== task vector optimization finished ===",
             f"study            : {result.study_name} ({result.n_trials} trials finished, {result.n_failed} failed)",
             f"best search score: {result.best_value:.4f} (trial {result.best_trial})",
             summary_table(result)]
    if result.holdout:
        lines.append("held-out scores  : " + ", ".join(f"{k} {v:.4f}" for k, v in result.holdout.items()))
    for sentence in result.verdict.get("sentences", []):
        lines.append(f"verdict          : {sentence}")
    if result.items_scored:
        lines.append(f"items scored     : {result.items_scored} in the search (pruned trials count the items "
                     "they scored)")
    weights = ", ".join(f"{k}={v:.3f}" for k, v in result.best_weights.items())
    lines.append(f"best weights     : {weights if len(weights) < 600 else weights[:600] + ' ...'}")
    if result.output_dir is None:
        lines.append("saved to         : nothing yet (--search_only); add --finalize to save the best model")
    else:
        lines.append(f"saved to         : {result.output_dir}")
    if result.files:
        lines.append(f"  beside the model: {', '.join(result.files)}")
    print("\n".join(lines))


def dry_run_plan(config: RunConfig, evaluator_line: str) -> str:
    """The plan, from config files only: no weights are read. A hub model's config.json is fetched alone, which also
    checks early that every model can be reached."""
    from transformers import AutoConfig

    from task_vector_opt.merging.models import auto_class_for
    from task_vector_opt.merging.vlm import memory_plan, name_map_for

    config_dirs = [resolve_config(source, config.cache_dir) for source in (*config.targets, config.base, config.tuned)]
    model_config = AutoConfig.from_pretrained(config_dirs[0], trust_remote_code=config.trust_remote_code)
    with torch.device("meta"):
        skeleton = auto_class_for(model_config).from_config(model_config, trust_remote_code=config.trust_remote_code)
    to_checkpoint = name_map_for(skeleton)  # a VLM: its language model's tensors only
    names = [n for n, _ in skeleton.named_parameters() if to_checkpoint(n) is not None]
    groups = ordered_groups(group_names(names, config.optimize_mode))
    n_vectors = len(config.tuned_models) or 1
    try:
        n_weights = len(planned_space(groups, n_vectors, config.optimize_mode, config.profile_knots,
                                      config.scale_first, config.weight_min, config.weight_max).params)
    except ValueError as exc:
        raise UsageError("--profile_knots", str(exc).split(": ", 1)[-1]) from None
    merge = config.merge
    n_densities = 0 if merge is None or not merge.sparsifies else n_vectors * (len(groups) if merge.density_per_group
                                                                               else 1)
    itemsize = DTYPES[config.dtype].itemsize
    parameters = dict(skeleton.named_parameters())
    on_device = config.vector_placement != "cpu" and config.device != "cpu"
    memory = memory_plan(sum(p.numel() for p in parameters.values()) * itemsize,
                         sum(parameters[n].numel() for n in names) * itemsize, on_device, n_vectors)
    return json.dumps({
        "study": config.study_name, "storage": redact(config.storage), "run_dir": str(config.run_dir),
        "optimize_mode": config.optimize_mode, "scale_search": "on" if config.scale_first else "off",
        "weights": n_weights, "tensors": len(names),
        "task_vectors": n_vectors, "merge_method": merge.method if merge is not None else "task_arithmetic",
        "densities": n_densities,
        "sampler": config.sampler, "n_trials": config.n_trials,
        "memory_estimate_gib": {config.device: round(memory.device_bytes / 2**30, 2),
                                **({} if on_device else
                                   {"cpu (target copy + task vectors)": round(memory.host_bytes / 2**30, 2)})},
        "evaluator": evaluator_line, "output_dir": str(config.output_dir),
    }, indent=2)
